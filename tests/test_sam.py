"""SAM and ASAM against independent closed-form computations, plus the optimizer contract."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import timm.optim
import timm.scheduler
import torch
from sam_reference import closure_steps
from torch import nn

from sam_train.sam import SAM


def _quadratic(seed: int = 0, dim: int = 5):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(dim, dim))
    a = m @ m.T + dim * np.eye(dim)  # symmetric positive definite
    w0 = rng.normal(size=dim)
    return a, w0


def _loss_and_grad(a: np.ndarray, w: torch.Tensor) -> torch.Tensor:
    a_t = torch.tensor(a, dtype=torch.float64)
    loss = 0.5 * w @ a_t @ w
    loss.backward()
    return loss


def _sam_step(a, w0, rho, lr, adaptive=False, eta=0.01):
    w = torch.tensor(w0, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=rho, adaptive=adaptive, eta=eta, lr=lr)
    _loss_and_grad(a, w)
    opt.step(lambda: _loss_and_grad(a, w))
    return w.detach().numpy()


@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sam_step_matches_closed_form_on_quadratic(rho):
    a, w0 = _quadratic()
    lr = 0.01
    g = a @ w0
    eps = rho * g / np.linalg.norm(g)
    expected = w0 - lr * a @ (w0 + eps)
    np.testing.assert_allclose(_sam_step(a, w0, rho, lr), expected, rtol=1e-10, atol=1e-12)


def test_asam_step_matches_closed_form_on_quadratic():
    a, w0 = _quadratic(1)
    rho, lr, eta = 0.5, 0.01, 0.01
    g = a @ w0
    t = np.abs(w0) + eta
    eps = rho * t**2 * g / np.linalg.norm(t * g)
    expected = w0 - lr * a @ (w0 + eps)
    got = _sam_step(a, w0, rho, lr, adaptive=True, eta=eta)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)
    assert not np.allclose(got, _sam_step(a, w0, rho, lr)), "ASAM must differ from SAM"


def test_rho_per_group_uses_one_global_norm():
    w1 = torch.tensor([3.0, 0.0], dtype=torch.float64, requires_grad=True)
    w2 = torch.tensor([0.0, 4.0], dtype=torch.float64, requires_grad=True)
    opt = SAM([{"params": [w1], "rho": 1.0}, {"params": [w2], "rho": 0.5}], torch.optim.SGD, lr=0.1)
    (0.5 * (w1 @ w1 + w2 @ w2)).backward()  # g = w, ||g|| = 5
    opt.first_step()
    np.testing.assert_allclose(w1.detach().numpy(), [3.0 + 1.0 * 3 / 5, 0.0])
    np.testing.assert_allclose(w2.detach().numpy(), [0.0, 4.0 + 0.5 * 4 / 5])


def test_zero_gradient_gives_no_perturbation_and_no_nan():
    w = torch.ones(3, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, lr=0.1)
    w.grad = torch.zeros(3)
    opt.first_step()
    assert torch.equal(w.detach(), torch.ones(3))
    opt.second_step()
    assert torch.isfinite(w).all()


def test_restore_is_an_exact_copy_of_the_original_weights():
    torch.manual_seed(0)
    w = torch.randn(1000, requires_grad=True)
    original = w.detach().clone()
    opt = SAM([w], torch.optim.SGD, rho=0.3, lr=0.0)
    (w.exp().sum()).backward()
    opt.first_step(zero_grad=True)
    assert not torch.equal(w.detach(), original)
    opt.restore()
    assert torch.equal(w.detach(), original)  # bit-exact, unlike w + eps - eps


def test_restore_follows_the_parameters_that_have_gradients_from_step_to_step():
    """The backup's list is cached across steps: a parameter without a gradient on one step
    (frozen, unused) must still be restored exactly on the next, and left alone meanwhile."""
    torch.manual_seed(0)
    a, b = torch.randn(5, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = SAM([a, b], torch.optim.SGD, rho=0.3, lr=0.0)
    for used in ([a, b], [a], [b], [a, b]):
        originals = [a.detach().clone(), b.detach().clone()]
        sum(p.exp().sum() for p in used).backward()
        opt.first_step(zero_grad=True)
        for p, original in zip([a, b], originals, strict=True):
            assert torch.equal(p.detach(), original) == all(p is not u for u in used)
        opt.restore()
        assert all(torch.equal(p.detach(), o) for p, o in zip([a, b], originals, strict=True))


def test_weight_decay_stays_in_the_base_optimizer():
    a, w0 = _quadratic(2)
    rho, lr, wd = 0.1, 0.01, 0.1
    w = torch.tensor(w0, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, rho=rho, lr=lr, weight_decay=wd)
    _loss_and_grad(a, w)
    opt.step(lambda: _loss_and_grad(a, w))
    g = a @ w0  # the ascent direction has no decay term
    eps = rho * g / np.linalg.norm(g)
    expected = w0 - lr * (a @ (w0 + eps) + wd * w0)
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-10)


def test_negative_rho_is_rejected():
    with pytest.raises(ValueError, match="rho"):
        SAM([torch.zeros(1, requires_grad=True)], torch.optim.SGD, rho=-0.1, lr=0.1)


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))


def test_state_dict_carries_momentum_and_resumes_identically():
    model = _tiny_model()
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    closure_steps(model, opt, 3, seed=1)
    state = copy.deepcopy(opt.state_dict())
    assert any("momentum_buffer" in s for s in state["state"].values())
    assert state["param_groups"][0]["rho"] == 0.05

    resumed_model = copy.deepcopy(model)
    resumed = SAM(resumed_model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    resumed.load_state_dict(state)
    assert resumed.param_groups is resumed.base_optimizer.param_groups
    closure_steps(model, opt, 2, seed=7)
    closure_steps(resumed_model, resumed, 2, seed=7)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_scheduler_on_sam_drives_the_base_optimizer():
    model = _tiny_model()
    base = timm.optim.create_optimizer_v2(model, opt="momentum", lr=0.1, weight_decay=1e-4)
    opt = SAM.wrap(base, rho=0.1)
    assert opt.param_groups is base.param_groups
    assert len(base.param_groups) == 2  # timm's no-decay group for biases
    sched = timm.scheduler.CosineLRScheduler(opt, t_initial=10)
    sched.step(5)
    assert base.param_groups[0]["lr"] == pytest.approx(0.05)
    torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5).step()
    assert base.param_groups[1]["lr"] == pytest.approx(0.025)


def _official_asam_eps(model: nn.Module, rho: float, eta: float) -> dict[str, torch.Tensor]:
    """SamsungLabs/ASAM's ``ascent_step`` transcribed: T = |w| + eta for parameters named
    ``*weight*``, 1 otherwise; eps = rho T^2 g / ||T g||."""
    scaled = {}
    for name, p in model.named_parameters():
        t = p.detach().abs() + eta if "weight" in name else torch.ones_like(p)
        scaled[name] = (p.grad * t, t)
    norm = torch.norm(torch.stack([torch.norm(g) for g, _ in scaled.values()])) + 1e-16
    return {name: g * t * rho / norm for name, (g, t) in scaled.items()}


@pytest.mark.parametrize("adaptive_params", ["weights", "all"])
def test_asam_adaptive_params_choose_the_official_or_the_every_parameter_scaling(
    adaptive_params,
):
    from conftest import compose_config

    from sam_train.build import build_optimizer

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).double()
    with torch.no_grad():  # biases far from zero, so scaling them or not differs
        for name, p in model.named_parameters():
            if "bias" in name:
                p.uniform_(1.0, 2.0)
    cfg = compose_config(["sam=asam", f"sam.adaptive_params={adaptive_params}"])
    optimizer = build_optimizer(model, cfg.optimizer, cfg.sam)
    model(torch.randn(8, 4, dtype=torch.float64)).square().mean().backward()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    expected = _official_asam_eps(model, cfg.sam.rho, cfg.sam.eta)
    optimizer.first_step()
    eps = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    if adaptive_params == "weights":
        for name in eps:
            torch.testing.assert_close(eps[name], expected[name], rtol=1e-9, atol=1e-12)
    else:  # every parameter scaled: the biases move by T^2 g / ||T g||, not g / ||T g||
        assert not torch.allclose(eps["2.bias"], expected["2.bias"])
        t = before["2.bias"].abs() + cfg.sam.eta
        ratio = eps["2.bias"] / (t**2 * model[2].bias.grad)
        torch.testing.assert_close(ratio, ratio[:1].expand_as(ratio))  # rho / ||T g||, shared
