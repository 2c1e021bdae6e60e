"""The SAM paper's CIFAR models: published sizes, Shake-Shake/ShakeDrop semantics, and both SAM
passes seeing the same random network when trained through the SAM step."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import sam_train.models  # noqa: F401  (registers the models)
from sam_train.models.shake import shake_drop, shake_shake
from sam_train.sam import SAM
from sam_train.step import SAMStep


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "kwargs", "millions", "tolerance"),
    [
        ("shake_shake26_2x96d", {}, 26.2, 0.05),  # Gastaldi (2017), Table 1
        ("cifar_resnet32", {}, 0.46, 0.005),  # He et al. (2016), Table 6
        # Han et al. (2017) publish 26.0M (truncated widths); the SAM paper's code rounds the
        # widths, "roughly 0.2M parameters more" (google-research/sam README).
        ("pyramidnet272_a200", {"width_rounding": "floor"}, 26.0, 0.05),
        ("pyramidnet272_a200", {}, 26.2, 0.05),
        ("pyramidnet272_a200_shakedrop", {}, 26.2, 0.05),
        # Table 3's fine-tuned models (Tan & Le 2019, Table 2: B7 66M; Xie et al. 2020: L2
        # 480M) and Chen et al.'s ViTs (their Table 2: ViT-S/16 22M, ViT-B/16 87M), ImageNet heads
        ("tf_efficientnet_b7.ra_in1k", {"num_classes": 1000}, 66.3, 0.1),
        ("tf_efficientnet_l2.ns_jft_in1k_475", {"num_classes": 1000}, 480.3, 0.5),
        ("vit_small_patch16_224", {"num_classes": 1000}, 22.1, 0.1),
        ("vit_base_patch16_224", {"num_classes": 1000}, 86.6, 0.5),
    ],
)
def test_parameter_counts_match_the_published_ones(name, kwargs, millions, tolerance):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = timm.create_model(name, **({"num_classes": 10} | kwargs))
    assert _params(model) / 1e6 == pytest.approx(millions, abs=tolerance)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("shake_shake26_2x96d", 16),
        ("pyramidnet272_a200_shakedrop", 16),
        ("cifar_resnet32", 32),
        ("wrn28_10", 16),
        ("resnet50", 32),
        ("resnet101", 32),
        ("resnet152", 32),
        ("tf_efficientnet_b7", 32),  # Table 3's b7, unpretrained (L2: 480M, counted above)
        ("vit_small_patch16_224", 224),
        ("vit_base_patch16_224", 224),
    ],
)
def test_every_paper_architecture_trains_on_a_tiny_batch(name, size):
    """Each real model, once: forward and backward on two small images, then evaluation."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=100).train()
    logits = model(torch.randn(2, 3, size, size))
    assert logits.shape == (2, 100)
    nn.functional.cross_entropy(logits, torch.tensor([3, 7])).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        x = torch.randn(2, 3, size, size)
        assert torch.equal(model(x), model(x)), "evaluation must be deterministic"


def test_shake_shake_blends_per_sample_with_independent_backward_weights():
    torch.manual_seed(0)
    a = torch.ones(64, 3, 2, 2, requires_grad=True)
    b = torch.zeros(64, 3, 2, 2, requires_grad=True)
    out = shake_shake(a, b, training=True)
    out.sum().backward()
    alpha = out[:, 0, 0, 0]
    beta = a.grad[:, 0, 0, 0]
    # One coefficient per sample, shared by its channels and pixels, in (0, 1).
    assert torch.equal(out, alpha.view(-1, 1, 1, 1).expand_as(out))
    assert ((alpha > 0) & (alpha < 1)).all() and alpha.unique().numel() == 64
    # Backward: a gets beta, b gets 1 - beta, beta drawn apart from alpha.
    assert torch.equal(a.grad, beta.view(-1, 1, 1, 1).expand_as(a))
    torch.testing.assert_close(a.grad + b.grad, torch.ones_like(a))
    assert ((beta > 0) & (beta < 1)).all() and not torch.allclose(alpha, beta)
    assert torch.equal(shake_shake(a, b, training=False), torch.full_like(a, 0.5))


def test_shake_drop_gates_forward_backward_and_expectation():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, requires_grad=True)
    out = shake_drop(x, keep_prob=0.7, training=True)
    out.sum().backward()
    forward_gate, backward_gate = out[:, 0], x.grad[:, 0]
    kept = forward_gate == 1.0
    # Kept samples pass unchanged both ways; dropped ones get alpha ~ U(-1, 1) forward and
    # beta ~ U(0, 1) backward.
    assert kept.float().mean().item() == pytest.approx(0.7, abs=0.03)
    assert torch.equal(backward_gate[kept], torch.ones(int(kept.sum())))
    assert forward_gate[~kept].min() < -0.9 and forward_gate[~kept].max() > 0.9
    assert backward_gate[~kept].min() >= 0 and backward_gate[~kept].max() < 1
    # Evaluation scales by the expectation: keep_prob + E[alpha] (1 - keep_prob) = keep_prob.
    torch.testing.assert_close(shake_drop(x, 0.7, training=False), 0.7 * x)
    assert torch.equal(shake_drop(x, 1.0, training=True), x)


def test_pyramidnet_shake_drop_keeps_block_l_of_n_with_one_minus_half_l_over_n():
    model = timm.create_model("pyramidnet272_a200_shakedrop", depth=20, alpha=24)
    keeps = [m.keep_prob for m in model.modules() if hasattr(m, "keep_prob")]
    n = 3 * (20 - 2) // 9
    assert keeps == pytest.approx([1 - 0.5 * (layer + 1) / n for layer in range(n)])
    plain = timm.create_model("pyramidnet272_a200", depth=20, alpha=24)
    assert not [m for m in plain.modules() if hasattr(m, "keep_prob")]


def _tiny(name: str) -> dict[str, int]:
    """A small depth and width of each random-network architecture (a fresh dict per call)."""
    return {
        "shake_shake26_2x96d": {"depth": 8, "base_width": 4},
        "pyramidnet272_a200_shakedrop": {"depth": 11, "alpha": 12},
    }[name]


def _reference_sam_step(model: nn.Module, x, y, seed: int, *, same_draw: bool) -> None:
    """SAM by hand: the random coefficients re-drawn from ``seed`` for both passes (or not)."""
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    torch.manual_seed(seed)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    if same_draw:
        torch.manual_seed(seed)
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)


@pytest.mark.parametrize("name", ["pyramidnet272_a200_shakedrop", "shake_shake26_2x96d"])
def test_sam_step_sees_the_same_random_network_in_both_passes(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **_tiny(name)).train()
    same, fresh = copy.deepcopy(model), copy.deepcopy(model)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    step = SAMStep(model, optimizer, nn.CrossEntropyLoss(), torch.device("cpu"))
    torch.manual_seed(123)
    assert step(x, y).finite
    _reference_sam_step(same, x, y, 123, same_draw=True)
    _reference_sam_step(fresh, x, y, 123, same_draw=False)

    for p, q in zip(model.parameters(), same.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    differs = any(
        not torch.allclose(p, q, atol=1e-6)
        for p, q in zip(model.parameters(), fresh.parameters(), strict=True)
    )
    assert differs, "a fresh draw in the second pass must give another update"
