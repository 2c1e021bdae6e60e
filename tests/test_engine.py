"""The two-pass step: running statistics, random draws, agreement with the manual API."""

from __future__ import annotations

import copy

import pytest
import timm.layers
import torch
from torch import nn

from sam_train.engine import Engine
from sam_train.sam import SAM, RunningStatsGuard


class RunningMeanTracker(nn.Module):
    """Keeps a running mean of its input without being a BatchNorm subclass."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.running.mul_(0.5).add_(0.5 * x.mean(0))
        return x


def _bn_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8),
        nn.BatchNorm1d(8),
        RunningMeanTracker(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _batch(n: int = 16, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def _engine(model: nn.Module, rho: float = 0.5, **kwargs) -> Engine:
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=0.1)
    return Engine(model, opt, nn.CrossEntropyLoss(), torch.device("cpu"), **kwargs)


def test_running_stats_come_from_the_first_pass_only():
    model = _bn_model()
    x, y = _batch()
    reference = copy.deepcopy(model).train()
    with torch.no_grad():
        reference(x)  # one forward at w: the only update the statistics may see
    engine = _engine(model)
    engine.model.train()
    engine.train_step(x, y)
    for name, buf in model.named_buffers():
        assert torch.equal(buf, dict(reference.named_buffers())[name]), name
    assert model[1].num_batches_tracked.item() == 1


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


class MaskRecorder(nn.Module):
    """Dropout that remembers each mask it drew."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand_like(x) > 0.5).float()
        self.masks.append(mask)
        return x * mask * 2


def test_both_passes_see_the_same_random_draw():
    torch.manual_seed(0)
    recorder = MaskRecorder()
    model = nn.Sequential(nn.Linear(6, 32), recorder, nn.Linear(32, 3))
    engine = _engine(model)
    engine.model.train()
    x, y = _batch()
    engine.train_step(x, y)
    engine.train_step(x, y)
    first, second, third, _ = recorder.masks
    assert torch.equal(first, second)
    assert not torch.equal(first, third), "the next step must draw anew"


def _plain_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def test_engine_step_equals_the_manual_sam_api():
    x, y = _batch()
    manual_model = _plain_model()
    manual = SAM(manual_model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    nn.functional.cross_entropy(manual_model(x), y).backward()
    manual.first_step(zero_grad=True)
    nn.functional.cross_entropy(manual_model(x), y).backward()
    manual.second_step(zero_grad=True)

    model = _plain_model()
    engine = _engine(model)
    engine.train_step(x, y)
    for p, q in zip(model.parameters(), manual_model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert engine.global_step == 1


def test_engine_without_sam_takes_one_pass():
    calls = []
    model = _plain_model()
    model.register_forward_hook(lambda *_: calls.append(1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Engine(model, opt, nn.CrossEntropyLoss(), torch.device("cpu")).train_step(*_batch())
    assert len(calls) == 1


def test_sam_step_takes_two_passes_and_moves_away_from_plain_sgd():
    calls = []
    model = _plain_model()
    model.register_forward_hook(lambda *_: calls.append(1))
    _engine(model).train_step(*_batch())
    assert len(calls) == 2
    sgd_model = _plain_model()
    opt = torch.optim.SGD(sgd_model.parameters(), lr=0.1)
    Engine(sgd_model, opt, nn.CrossEntropyLoss(), torch.device("cpu")).train_step(*_batch())
    assert not torch.equal(model[0].weight, sgd_model[0].weight)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_runs_on_cpu(precision):
    model = _plain_model()
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    engine = _engine(model, precision=precision, scaler=scaler)
    before = model[0].weight.detach().clone()
    engine.train_step(*_batch())
    assert torch.isfinite(model[0].weight).all()
    assert not torch.equal(before, model[0].weight)


def test_evaluate_counts_top1_and_top5():
    model = nn.Linear(6, 10)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.arange(10.0))  # always predicts 9, then 8, 7, 6, 5
    x = torch.zeros(10, 6)
    y = torch.arange(10)
    engine = Engine(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        torch.device("cpu"),
    )
    stats = engine.evaluate([(x, y)])
    assert stats["count"] == 10
    assert stats["acc1"] == pytest.approx(10.0)
    assert stats["acc5"] == pytest.approx(50.0)


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
    from sam_train.errors import NonFiniteError

    model = NaNAtCalls({bad_pass})
    engine = _engine(model, max_bad_steps=2)
    before = [p.detach().clone() for p in model.parameters()]
    engine.train_step(*_batch())
    assert engine.skipped_steps == 1 and engine.global_step == 1
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    engine.train_step(*_batch())  # a good step resets the streak
    assert engine.skipped_steps == 1
    assert not torch.equal(model.linear.weight, before[0])
    model.bad_calls = {4, 6}
    engine.train_step(*_batch())
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        engine.train_step(*_batch())


@pytest.mark.parametrize("bad_pass", [0, 1])
def test_fp16_overflow_in_either_pass_skips_the_step(bad_pass):
    model = NaNAtCalls({bad_pass})
    engine = _engine(model, precision="fp16", scaler=torch.amp.GradScaler("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    engine.train_step(*_batch())
    assert engine.skipped_steps == 1
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    assert engine.scaler.get_scale() < 65536.0
