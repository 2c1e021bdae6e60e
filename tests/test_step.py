"""The two-pass step: running statistics, random draws, agreement with the manual API, the
non-finite policy, and evaluation."""

from __future__ import annotations

import copy

import pytest
import timm.layers
import torch
from sam_reference import (
    CPU,
    LR,
    MaskRecorder,
    RunningMeanTracker,
    batches,
    bn_mlp,
    mlp,
    sam_step,
    sgd_step,
)
from torch import nn

from sam_train.errors import NonFiniteError
from sam_train.sam import SAM, LookSAM, RunningStatsGuard
from sam_train.step import SAMStep, evaluate


def _step(model: nn.Module, rho: float = 0.5, inner_steps: int = 1, **kwargs) -> SAMStep:
    optimizer = {"rho": rho, "lr": 0.1, "momentum": 0.0, "inner_steps": inner_steps}
    return sam_step(model, optimizer=optimizer, **kwargs)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    return batches(n=1)[0]


def _stats_and_dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        RunningMeanTracker(8),
        MaskRecorder(),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


@pytest.mark.parametrize("inner_steps", [1, 3])  # SAM, and multi-step ascent (3 ascent passes)
def test_every_pass_sees_the_same_draw_and_only_the_first_updates_running_stats(inner_steps):
    model = _stats_and_dropout_model()
    x, y = _batch()
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)  # one forward at w: the only update the statistics may see
    step = _step(model, rho=0.1, inner_steps=inner_steps)
    model.train()
    step(x, y)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, dict(reference.named_buffers())[name]), name
    assert model[1].num_batches_tracked.item() == 1
    masks = model[3].masks
    passes = 1 + inner_steps  # the gradient at w, the extra ascent passes, the perturbed one
    assert len(masks) == passes and all(torch.equal(masks[0], m) for m in masks[1:])
    step(x, y)
    assert len(masks) == 2 * passes
    assert not torch.equal(masks[0], masks[passes]), "the next step must draw anew"


def test_running_stats_guard_covers_timm_norm_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 1), timm.layers.BatchNormAct2d(4)).train()
    guard = RunningStatsGuard(model)
    before = [b.clone() for b in model.buffers()]
    with guard.frozen():
        model(torch.randn(2, 3, 4, 4))
        assert not torch.equal(model[1].running_mean, before[0])
    for b, saved in zip(model.buffers(), before, strict=True):
        assert torch.equal(b, saved)


def _manual_sam(model: nn.Module, x, y, inner_steps: int) -> None:
    """One SAM step through the optimizer's own API: the two calls, or a closure."""
    manual = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, inner_steps=inner_steps)

    def closure():
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    if inner_steps == 1:
        manual.first_step(zero_grad=True)
        closure()
        manual.second_step(zero_grad=True)
    else:
        manual.step(closure)


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_step_equals_the_manual_sam_api_and_reports_the_loss_at_w(inner_steps):
    x, y = _batch()
    manual_model = mlp()
    _manual_sam(manual_model, x, y, inner_steps)
    model = mlp()
    with torch.no_grad():
        logits = model(x)
    step = _step(model, inner_steps=inner_steps)
    output = step(x, y)
    for p, q in zip(model.parameters(), manual_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert step.steps_taken == 1 and output.finite and output.count == len(y)
    expected_loss = nn.functional.cross_entropy(logits, y, reduction="sum")
    torch.testing.assert_close(output.loss_sum, expected_loss, rtol=1e-6, atol=0)
    assert output.correct.item() == (logits.argmax(1) == y).sum().item()
    assert output.grad_norm is not None and output.grad_norm > 0


def test_sam_step_moves_away_from_plain_sgd():
    model, sgd_model = mlp(), mlp()
    assert _step(model)(*_batch()).grad_norm is not None
    plain = sgd_step(sgd_model)
    assert not plain.uses_sam and plain(*_batch()).grad_norm is None
    assert not torch.equal(model[0].weight, sgd_model[0].weight)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_runs_on_cpu(precision):
    model = mlp()
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    step = _step(model, precision=precision, scaler=scaler)
    before = model[0].weight.detach().clone()
    assert step(*_batch()).finite
    assert torch.isfinite(model[0].weight).all()
    assert not torch.equal(before, model[0].weight)


def test_evaluate_counts_top1_and_top5_and_keeps_the_training_mode():
    model = nn.Linear(6, 10).train()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.arange(10.0))  # always predicts 9, then 8, 7, 6, 5
    x = torch.zeros(10, 6)
    y = torch.arange(10)
    stats = evaluate(model, [(x[:4], y[:4]), (x[4:], y[4:])], CPU)
    assert stats["count"] == 10
    assert stats["acc1"] == pytest.approx(10.0)
    assert stats["acc5"] == pytest.approx(50.0)
    expected = nn.functional.cross_entropy(model(x), y).item()
    assert stats["loss"] == pytest.approx(expected, rel=1e-6)
    assert model.training


class NaNAtCalls(nn.Module):
    """Linear model whose output is NaN on chosen forward calls (counted from 0)."""

    def __init__(self, bad_calls: set[int]) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(6, 3)
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.linear(x)
        if self.calls in self.bad_calls:
            out = out * float("nan")
        self.calls += 1
        return out


@pytest.mark.parametrize("bad_pass", [0, 1])  # NaN in the first or in the second SAM pass
def test_nonfinite_step_is_skipped_and_weights_untouched(bad_pass):
    model = NaNAtCalls({bad_pass})
    step = _step(model, max_bad_steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    assert not step(*_batch()).finite
    assert step.nonfinite.streak == 1 and step.steps_taken == 1
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert not step.base_optimizer.state, "a skipped step must not create optimizer state"
    assert step(*_batch()).finite  # a good step resets the streak
    assert step.nonfinite.streak == 0
    assert not torch.equal(model.linear.weight, before[0])
    model.bad_calls = {4, 6}
    assert not step(*_batch()).finite
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        step(*_batch())


def test_looksam_steps_after_a_skipped_sam_step_are_taken():
    """A LookSAM SAM step with a NaN second pass is skipped; the g_v it would store is
    dropped (zeroed on the device), so the k - 1 steps after it apply their plain gradient
    instead of being skipped too (each would halve fp16's scale)."""
    model = NaNAtCalls({1})  # the SAM step's second pass
    step = sam_step(model, LookSAM, optimizer={"k": 3, "momentum": 0.0}, max_bad_steps=5)
    assert not step(*_batch()).finite
    assert all(not g_v.any() for g_v in step.optimizer._g_v.values())
    reference = copy.deepcopy(model.linear)
    for _ in range(2):  # the reused steps: exactly plain SGD steps now
        x, y = _batch()
        assert step(x, y).finite
        reference.zero_grad()
        nn.functional.cross_entropy(reference(x), y).backward()
        with torch.no_grad():
            for q in reference.parameters():
                q -= LR * q.grad
    for p, q in zip(model.linear.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q)


@pytest.mark.parametrize("precision", ["none", "fp16"])  # skip_nonfinite, or fp16's scaler
def test_a_skipped_step_leaves_the_running_statistics_as_they_were(precision):
    """A NaN batch through BatchNorm writes NaN into running_mean/var in the first pass; a
    skipped step must put the statistics back, or every later evaluation is NaN."""
    model = bn_mlp().train()
    x, y = _batch()
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    step = _step(model, precision=precision, scaler=scaler)
    step(x, y)  # statistics that differ from their initial values
    before = {name: b.clone() for name, b in model.named_buffers()}
    bad = x.clone()
    bad[0, 0] = float("nan")
    assert not step(bad, y).finite
    for name, buf in model.named_buffers():
        assert torch.equal(buf, before[name]), name
        assert torch.isfinite(buf.float()).all(), name
    assert model[1].num_batches_tracked.item() == 1
    assert step(x, y).finite  # and the next good step updates them again
    assert model[1].num_batches_tracked.item() == 2
