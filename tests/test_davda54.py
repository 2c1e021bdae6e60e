"""sam-train's optimizers as a drop-in for davda54/sam: its two-call loop, an LR scheduler on
the SAM object (davda54/sam#28), the periodic variants, and ASAM's ``eta``."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from sam_train.sam import SAM, IntervalSAM, LookSAM


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(step)
    return torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)


def _davda54_step(model: nn.Module, optimizer: SAM, step: int) -> None:
    """davda54/sam's README loop, verbatim: the second pass whatever first_step returned."""
    x, y = _batch(step)
    F.cross_entropy(model(x), y).backward()
    optimizer.first_step(zero_grad=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)


def _checked_step(model: nn.Module, optimizer: SAM, step: int) -> None:
    """The loop sam-train documents: the second pass only when the weights were perturbed."""
    x, y = _batch(step)
    F.cross_entropy(model(x), y).backward()
    if optimizer.first_step(zero_grad=True):
        F.cross_entropy(model(x), y).backward()
    optimizer.second_step(zero_grad=True)


def _closure_step(model: nn.Module, optimizer: SAM, step: int) -> None:
    x, y = _batch(step)

    def closure() -> torch.Tensor:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()
    optimizer.step(closure)
    optimizer.zero_grad()


def _weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _sgd(model: nn.Module, variant: type[SAM] = SAM, **kwargs) -> SAM:
    return variant(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9, **kwargs)


def test_scheduler_on_the_sam_object_does_not_warn_and_steps_the_base_optimizer():
    model = _model()
    optimizer = _sgd(model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "lr_scheduler.step() before optimizer.step()"
        for step in range(3):
            _davda54_step(model, optimizer, step)
            scheduler.step()
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * 0.5**3)


@pytest.mark.parametrize(("variant", "kwargs"), [(IntervalSAM, {"k": 2}), (LookSAM, {"k": 2})])
def test_davda54_loop_fails_clearly_on_a_skipped_ascent(variant, kwargs):
    model = _model()
    optimizer = _sgd(model, variant, **kwargs)
    _davda54_step(model, optimizer, 0)  # step 0 perturbs: the loop is right
    before = _weights(model)
    with pytest.raises(RuntimeError, match=r"first_step returned False .* only when first_step"):
        _davda54_step(model, optimizer, 1)  # step 1 skips the ascent; a second pass follows
    torch.testing.assert_close(_weights(model), before, rtol=0, atol=0)  # nothing applied


@pytest.mark.parametrize(("variant", "kwargs"), [(IntervalSAM, {"k": 2}), (LookSAM, {"k": 2})])
def test_checked_loop_equals_the_closure_step(variant, kwargs):
    loop_model, closure_model = _model(), _model()
    loop_opt, closure_opt = (
        _sgd(loop_model, variant, **kwargs),
        _sgd(closure_model, variant, **kwargs),
    )
    for step in range(5):
        _checked_step(loop_model, loop_opt, step)
        _closure_step(closure_model, closure_opt, step)
    torch.testing.assert_close(_weights(loop_model), _weights(closure_model), rtol=0, atol=0)
    assert not torch.equal(_weights(loop_model), _weights(_model())), "it trained"


def _asam_eps(w0: np.ndarray, g: np.ndarray, rho: float, eta: float) -> np.ndarray:
    """eps = rho T^2 g / ||T g||, T = |w| + eta; davda54/sam's ``adaptive=True`` is eta = 0."""
    t = np.abs(w0) + eta
    return rho * t**2 * g / np.linalg.norm(t * g)


@pytest.mark.parametrize("eta", [0.0, 0.01])
def test_adaptive_matches_davda54_only_with_eta_zero(eta):
    rng = np.random.default_rng(0)
    w0, target = rng.normal(size=7), rng.normal(size=7)
    w = torch.tensor(w0, requires_grad=True)
    optimizer = SAM([w], torch.optim.SGD, rho=0.5, adaptive=True, eta=eta, lr=0.1)
    (0.5 * ((w - torch.tensor(target)) ** 2).sum()).backward()
    optimizer.first_step()
    eps = w.detach().numpy() - w0
    g = w0 - target
    np.testing.assert_allclose(eps, _asam_eps(w0, g, 0.5, eta), rtol=1e-10)
    davda54 = _asam_eps(w0, g, 0.5, 0.0)
    assert np.allclose(eps, davda54, rtol=1e-10) == (eta == 0.0)
