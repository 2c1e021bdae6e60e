"""The efficient SAM variants (issue 22): update rules against NumPy computations written from
the papers' equations, resume, pass counts, and the refusals.

The problems are quadratics L(w) = 1/2 w^T A w (gradient A w), as in test_sam_variants.py.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, config_refusal, run_in_process
from sam_reference import CPU, sam_step, sgd_step, train
from test_lifecycle import BASE, _Act, _assert_same_weights, _last, inject  # noqa: F401
from torch import nn
from torch.utils._pytree import tree_flatten

import sam_train.train as train_module
from sam_train.config import ConfigError
from sam_train.config.schema import RST_SCHEDULES, WEIGHT_PERTURBATION_VARIANTS
from sam_train.sam import (
    AESAM,
    ESAM,
    KSAM,
    MESA,
    SAF,
    SAM,
    VARIANTS,
    BayesianSAM,
    MomentumSAM,
    RandomizedSAM,
    WeightedSAM,
)
from sam_train.sam.rst import SCHEDULE_SHAPES
from sam_train.step import SAMStep
from sam_train.step.trajectory import TrajectoryLoss
from sam_train.strategy import SingleProcess

A_DIM = 6


def _quadratic(seed: int = 0):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(A_DIM, A_DIM))
    return m @ m.T + A_DIM * np.eye(A_DIM), rng.normal(size=A_DIM)


def _quadratic_steps(opt_factory, a: np.ndarray, w0: np.ndarray, steps: int):
    """``steps`` calls of ``opt.step(closure)`` on the quadratic; the weights and the number
    of closure calls (forward-backward passes)."""
    w = torch.tensor(w0, requires_grad=True)
    a_t = torch.tensor(a)
    opt = opt_factory([w])
    calls = [0]

    def closure():
        calls[0] += 1
        loss = 0.5 * w @ a_t @ w
        loss.backward()
        return loss

    for _ in range(steps):
        opt.zero_grad()
        if not isinstance(opt, SAM):  # the base optimizer alone
            closure()
            opt.step()
            continue
        if not opt.single_pass:  # SAM.step needs the gradient at w
            closure()
        opt.step(closure)
    return w.detach().numpy(), calls[0], opt


def _sam_update(a, w, rho, lr):
    """One SAM step with plain SGD: w - lr * grad L(w + rho g / ||g||)."""
    g = a @ w
    return w - lr * (a @ (w + rho * g / np.linalg.norm(g)))


# --------------------------------------------------------------------------- MSAM
def _msam_reference(a, w0, rho, lr, mu, steps):
    """Becker et al.: w~ = w - rho v/||v||, g = grad L(w~), v = mu v + g, w -= lr v."""
    w, v = w0.copy(), None
    for _ in range(steps):
        point = w if v is None else w - rho * v / np.linalg.norm(v)
        g = a @ point
        v = g.copy() if v is None else mu * v + g
        w = w - lr * v
    return w


def test_msam_takes_the_gradient_along_the_normalised_momentum_in_one_pass():
    a, w0 = _quadratic()
    got, calls, _ = _quadratic_steps(
        lambda p: MomentumSAM(p, torch.optim.SGD, rho=0.3, lr=0.01, momentum=0.9), a, w0, 5
    )
    assert calls == 5  # one forward-backward per step
    np.testing.assert_allclose(got, _msam_reference(a, w0, 0.3, 0.01, 0.9, 5), rtol=1e-10)
    sgd, _, _ = _quadratic_steps(lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9), a, w0, 5)
    assert not np.allclose(got, sgd)


def test_msam_step_one_is_the_base_step_and_adam_perturbs_along_exp_avg():
    a, w0 = _quadratic()
    first, _, _ = _quadratic_steps(
        lambda p: MomentumSAM(p, torch.optim.AdamW, rho=0.3, lr=0.01), a, w0, 1
    )
    adam, _, _ = _quadratic_steps(lambda p: torch.optim.AdamW(p, lr=0.01), a, w0, 1)
    np.testing.assert_array_equal(first, adam)  # no momentum yet: no perturbation

    _, _, opt = _quadratic_steps(
        lambda p: MomentumSAM(p, torch.optim.AdamW, rho=0.3, lr=0.01), a, w0, 2
    )
    w = opt.param_groups[0]["params"][0]
    before = w.detach().numpy().copy()
    m = opt.state[w]["exp_avg"].numpy()
    opt.perturb_before_pass()
    np.testing.assert_allclose(w.detach().numpy(), before - 0.3 * m / np.linalg.norm(m))
    opt.restore()
    np.testing.assert_array_equal(w.detach().numpy(), before)  # copied back exactly


def test_msam_refuses_a_base_optimizer_without_momentum():
    w = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError, match="needs a base optimizer with momentum"):
        MomentumSAM(w, torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="needs a base optimizer with momentum"):
        MomentumSAM(w, torch.optim.AdamW, lr=0.1, betas=(0.0, 0.99))


# --------------------------------------------------------------------------- RST
def test_rst_takes_a_sam_step_with_probability_p_from_its_seeded_trials():
    a, w0 = _quadratic()
    steps, p, seed = 12, 0.5, 7
    got, calls, _ = _quadratic_steps(
        lambda q: RandomizedSAM(q, torch.optim.SGD, rho=0.2, lr=0.02, probability=p, seed=seed),
        a,
        w0,
        steps,
    )
    trials = torch.Generator().manual_seed(seed)
    w, sam_steps = w0.copy(), 0
    for _ in range(steps):
        if torch.rand((), generator=trials).item() < p:
            w, sam_steps = _sam_update(a, w, 0.2, 0.02), sam_steps + 1
        else:
            w = w - 0.02 * (a @ w)
    assert 0 < sam_steps < steps, "the trials must mix both kinds of step"
    assert calls == steps + sam_steps
    np.testing.assert_allclose(got, w, rtol=1e-10)


@pytest.mark.parametrize(("p", "sam_steps"), [(0.0, 0), (1.0, 5)])
def test_rst_with_p_0_is_the_base_optimizer_and_with_p_1_is_sam(p, sam_steps):
    a, w0 = _quadratic()
    _, calls, _ = _quadratic_steps(
        lambda q: RandomizedSAM(q, torch.optim.SGD, rho=0.2, lr=0.02, probability=p), a, w0, 5
    )
    assert calls == 5 + sam_steps


#: p_t by hand, 0.2 -> 0.8 over T = 4 steps, at t = 0..5 (held at p_end past T); cosine's
#: shape (1 - cos(pi x)) / 2 is 0.1464466 at x = 1/4 and 0.8535534 at x = 3/4.
RST_SCHEDULE_VALUES = {
    "constant": [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
    "linear": [0.2, 0.35, 0.5, 0.65, 0.8, 0.8],
    "cosine": [0.2, 0.2878679656, 0.5, 0.7121320344, 0.8, 0.8],
    "step": [0.2, 0.2, 0.8, 0.8, 0.8, 0.8],
}


def test_rst_schedules_are_the_config_choices():
    assert tuple(SCHEDULE_SHAPES) == RST_SCHEDULES


@pytest.mark.parametrize("schedule", list(RST_SCHEDULE_VALUES))
def test_rst_schedule_moves_p_from_start_to_end_over_the_run(schedule):
    opt = RandomizedSAM(
        [torch.zeros(2, requires_grad=True)],
        torch.optim.SGD,
        lr=0.1,
        probability=0.2,
        probability_end=0.8,
        probability_schedule=schedule,
        total_steps=4,
    )
    got = [opt.probability_at(t) for t in range(6)]
    np.testing.assert_allclose(got, RST_SCHEDULE_VALUES[schedule], rtol=0, atol=1e-9)


def test_rst_takes_as_many_sam_steps_as_its_trials_under_a_schedule_about_the_mean_of_p():
    """Linear from 0 to 1 over T steps: p_t = t / T. The SAM steps are exactly the seeded
    trials below p_t, and their fraction is within 3 binomial standard deviations of the mean
    of p_t, (T - 1) / (2 T)."""
    a, w0 = _quadratic()
    total, seed = 400, 11
    _, calls, opt = _quadratic_steps(
        lambda q: RandomizedSAM(
            q,
            torch.optim.SGD,
            rho=0.01,
            lr=0.002,
            probability=0.0,
            probability_end=1.0,
            probability_schedule="linear",
            total_steps=total,
            seed=seed,
        ),
        a,
        w0,
        total,
    )
    sam_steps = calls - total
    trials = torch.Generator().manual_seed(seed)
    expected = sum(torch.rand((), generator=trials).item() < t / total for t in range(total))
    assert sam_steps == expected
    p = np.arange(total) / total
    assert abs(sam_steps - p.sum()) <= 3 * np.sqrt((p * (1 - p)).sum())
    assert p.mean() == (total - 1) / (2 * total)
    assert opt.state_dict()["sam"]["steps"] == total


def test_build_gives_rst_the_runs_optimizer_steps_for_its_schedule():
    from sam_train.build import sam_kwargs

    cfg = compose_config(
        ["sam=rst", "sam.probability_schedule=step", "sam.probability_end=0.1"]
    ).sam
    kwargs = sam_kwargs(cfg, total_steps=120, seed=9)
    assert kwargs["total_steps"] == 120 and kwargs["seed"] == 9
    assert (kwargs["probability_schedule"], kwargs["probability_end"]) == ("step", 0.1)
    opt = VARIANTS["rst"]([torch.zeros(2, requires_grad=True)], torch.optim.SGD, lr=0.1, **kwargs)
    assert (opt.probability_at(59), opt.probability_at(60)) == pytest.approx((0.5, 0.1))


def test_rst_resumes_mid_schedule_from_its_step_counter_and_trials():
    """Crash at step 4 of a cosine 1 -> 0 schedule over 8 steps, reload the optimizer's
    state: the last 4 steps equal the uninterrupted run's; without the saved step counter
    (the schedule restarted at t = 0) they do not."""
    a = torch.tensor(_quadratic()[0])

    def run(w, opt, steps):
        for _ in range(steps):
            opt.zero_grad()
            (0.5 * w @ a @ w).backward()
            opt.step(lambda: (0.5 * w @ a @ w).backward())

    def make(w):
        return RandomizedSAM(
            [w],
            torch.optim.SGD,
            rho=0.2,
            lr=0.02,
            momentum=0.9,
            probability=1.0,
            probability_end=0.0,
            probability_schedule="cosine",
            total_steps=8,
            seed=5,
        )

    w = torch.tensor(_quadratic()[1], requires_grad=True)
    opt = make(w)
    run(w, opt, 4)
    saved, w_saved = copy.deepcopy(opt.state_dict()), w.detach().clone()
    run(w, opt, 4)
    finals = []
    for state in (saved, {**saved, "sam": {**saved["sam"], "steps": 0, "decided": None}}):
        w2 = w_saved.clone().requires_grad_(True)
        opt2 = make(w2)
        opt2.load_state_dict(copy.deepcopy(state))
        run(w2, opt2, 4)
        finals.append(w2.detach())
    assert torch.equal(finals[0], w.detach())
    assert not torch.equal(finals[1], w.detach()), "the step counter must matter"


# --------------------------------------------------------------------------- AE-SAM
def _aesam_reference(a, w0, rho, lr, delta, c1, c2, total, steps):
    """Jiang et al., Algorithm 1: SAM when ||g||^2 >= mu + c_t sigma, c_t linear in t/T."""
    w, mu, var, decisions = w0.copy(), 0.0, 0.0, []
    for t in range(steps):
        g = a @ w
        s = float(g @ g)
        mu = delta * mu + (1 - delta) * s
        var = delta * var + (1 - delta) * (s - mu) ** 2
        c = c1 + (c2 - c1) * min(t / total, 1.0)
        sharp = s >= mu + c * np.sqrt(var)
        decisions.append(sharp)
        w = _sam_update(a, w, rho, lr) if sharp else w - lr * g
    return w, decisions


def test_aesam_takes_sam_steps_where_the_squared_gradient_norm_stands_out():
    a, w0 = _quadratic()
    steps, total = 30, 30
    got, calls, opt = _quadratic_steps(
        lambda q: AESAM(
            q,
            torch.optim.SGD,
            rho=0.2,
            lr=0.02,
            ema_decay=0.8,
            threshold_start=-0.5,
            threshold_end=1.0,
            total_steps=total,
        ),
        a,
        w0,
        steps,
    )
    want, decisions = _aesam_reference(a, w0, 0.2, 0.02, 0.8, -0.5, 1.0, total, steps)
    assert 0 < sum(decisions) < steps, "the policy must take both kinds of step here"
    assert opt.sam_steps == sum(decisions) and calls == steps + sum(decisions)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_aesam_always_syncs_the_first_gradient():
    w = [torch.zeros(1, requires_grad=True)]
    assert AESAM(w, torch.optim.SGD, lr=0.1).needs_synced_first_pass()


# --------------------------------------------------------------------------- WSAM
def _wsam_reference(a, w0, rho, lr, gamma, decouple, steps):
    """Yue et al.: the loss L + alpha (L(w + eps) - L), alpha = gamma / (1 - gamma); plain
    SGD applies g + alpha (g_s - g), or g and then, decoupled, lr alpha (g_s - g)."""
    alpha, w = gamma / (1 - gamma), w0.copy()
    for _ in range(steps):
        g = a @ w
        g_s = a @ (w + rho * g / np.linalg.norm(g))
        w = w - lr * (g + alpha * (g_s - g))  # the same update either way with plain SGD
    return w


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_weights_the_sharpness_gradient_by_gamma_over_one_minus_gamma(decouple):
    a, w0 = _quadratic()
    got, calls, _ = _quadratic_steps(
        lambda q: WeightedSAM(q, torch.optim.SGD, rho=0.2, lr=0.01, gamma=0.8, decouple=decouple),
        a,
        w0,
        4,
    )
    assert calls == 8
    np.testing.assert_allclose(got, _wsam_reference(a, w0, 0.2, 0.01, 0.8, decouple, 4))


def test_wsam_with_gamma_one_half_and_no_decoupling_is_sam():
    a, w0 = _quadratic()
    wsam, _, _ = _quadratic_steps(
        lambda q: WeightedSAM(q, torch.optim.SGD, rho=0.2, lr=0.01, gamma=0.5, decouple=False),
        a,
        w0,
        3,
    )
    sam, _, _ = _quadratic_steps(lambda q: SAM(q, torch.optim.SGD, rho=0.2, lr=0.01), a, w0, 3)
    np.testing.assert_allclose(wsam, sam, rtol=1e-12)


@pytest.mark.parametrize("decouple", [True, False])
def test_wsam_matches_pytorch_optimizer_on_a_small_network(decouple):
    """pytorch_optimizer 4.1's WSAM, same model, data and momentum SGD: the same weights
    (its BatchNorm handling is irrelevant to this network without running statistics)."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    data = _data(4)
    models = [_mlp(), _mlp()]
    same = {"rho": 0.1, "gamma": 0.7, "decouple": decouple, "lr": 0.05, "momentum": 0.9}
    ours = WeightedSAM(models[0].parameters(), torch.optim.SGD, **same)
    theirs = pytorch_optimizer.WSAM(models[1], models[1].parameters(), torch.optim.SGD, **same)
    for model, opt in zip(models, (ours, theirs), strict=True):
        for x, y in data:

            def closure(model=model, x=x, y=y):
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.zero_grad()
            if opt is ours:
                closure()
            opt.step(closure)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- K-SAM, ESAM
def _softmax_regression():
    torch.manual_seed(0)
    return nn.Linear(6, 3)


def _grad_at(w, b, x, y):
    """The gradient of the mean cross-entropy of (x, y) for a linear model (w, b)."""
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    nn.functional.cross_entropy(x @ w.T + b, y).backward()
    return w.grad, b.grad


def _losses_at(w, b, x, y):
    return nn.functional.cross_entropy(x @ w.T + b, y, reduction="none")


def _sam_on(w, b, x_first, y_first, x_second_fn, rho, lr):
    """eps = rho g / ||g|| from (x_first, y_first); the SGD step with the gradient at w + eps
    of the examples ``x_second_fn(w + eps, b + eps_b)`` picks."""
    gw, gb = _grad_at(w, b, x_first, y_first)
    norm = torch.cat([gw.flatten(), gb]).norm()
    ew, eb = rho * gw / norm, rho * gb / norm
    x2, y2 = x_second_fn(w + ew, b + eb)
    sw, sb = _grad_at(w + ew, b + eb, x2, y2)
    return w - lr * sw, b - lr * sb


def _one_step(opt_cls, x, y, **kwargs):
    model = _softmax_regression()
    opt = opt_cls(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, **kwargs)
    step = SAMStep(model, opt, nn.CrossEntropyLoss(), CPU)
    sizes = []
    model.register_forward_hook(lambda m, args, out: sizes.append(len(args[0])))
    step(x, y)
    return model, step, sizes


def test_ksam_takes_both_sam_gradients_on_the_k_highest_loss_examples():
    x, y = _data(1)[0]
    model0 = _softmax_regression()
    w, b = model0.weight.detach(), model0.bias.detach()
    top = torch.topk(_losses_at(w, b, x, y), 4).indices
    want = _sam_on(w, b, x[top], y[top], lambda *_: (x[top], y[top]), 0.3, 0.1)
    model, step, sizes = _one_step(KSAM, x, y, select_fraction=0.25)
    assert sizes == [16, 4, 4]  # rank the batch, then both passes on k = 4
    assert (step.counts.forward_examples, step.counts.backward_examples) == (24, 8)
    torch.testing.assert_close(model.weight.detach(), want[0])
    torch.testing.assert_close(model.bias.detach(), want[1])


def test_esam_runs_the_second_pass_on_the_examples_whose_loss_rose_most():
    x, y = _data(1)[0]
    model0 = _softmax_regression()
    w, b = model0.weight.detach(), model0.bias.detach()
    before = _losses_at(w, b, x, y)

    def sharpest(w_eps, b_eps):  # the official rule: strictly above the 8th largest rise
        rise = _losses_at(w_eps, b_eps, x, y) - before
        keep = rise > torch.topk(rise, 8).values[-1]
        return x[keep], y[keep]

    want = _sam_on(w, b, x, y, sharpest, 0.3, 0.1)
    model, step, sizes = _one_step(ESAM, x, y, select_fraction=0.5, perturb_fraction=1.0)
    assert sizes == [16, 16, 7]  # the batch, its losses at w + eps, the 7 sharpest
    assert (step.counts.forward_examples, step.counts.backward_examples) == (39, 23)
    torch.testing.assert_close(model.weight.detach(), want[0])
    torch.testing.assert_close(model.bias.detach(), want[1])


def test_esam_without_data_selection_is_sam_with_its_stochastic_perturbation():
    x, y = _data(1)[0]
    _, step, sizes = _one_step(ESAM, x, y, select_fraction=1.0, perturb_fraction=0.5)
    assert not step.optimizer.selects_examples and sizes == [16, 16]


def _esam_swp_reference(data, rho, lr, beta, seed):
    """ESAM's stochastic weight perturbation by hand (dydjw9/Efficient_SAM): each of the
    tensors (w, b) in S with probability beta, drawn from ``seed``'s generator, eps = rho /
    beta * g_S / ||g_S|| on S, SGD with the gradient at w + eps; the draws too."""
    model = _softmax_regression()
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    gen, draws = torch.Generator().manual_seed(seed), []
    for x, y in data:
        keep = (torch.rand(2, generator=gen) < beta).tolist()
        gw, gb = _grad_at(w, b, x, y)
        pairs = list(zip((gw, gb), keep, strict=True))
        norm = torch.cat([g.flatten() for g, k in pairs if k] or [torch.ones(1)]).norm()
        ew, eb = (rho / beta * g / norm if k else 0 * g for g, k in pairs)
        sw, sb = _grad_at(w + ew, b + eb, x, y)
        w, b = w - lr * sw, b - lr * sb
        draws.append(tuple(keep))
    return w, b, draws


class _GradientLog:
    """Which parameters each backward computed a weight gradient for, pass by pass."""

    def __init__(self, model: nn.Module) -> None:
        self.passes: list[set[str]] = []
        self.names = [name for name, _ in model.named_parameters()]
        model.register_forward_pre_hook(self._new_pass)
        for name, p in model.named_parameters():
            p.register_post_accumulate_grad_hook(lambda _, name=name: self.passes[-1].add(name))

    def _new_pass(self, module, args) -> None:
        if torch.is_grad_enabled():
            self.passes.append(set())


@pytest.mark.parametrize("select_fraction", [1.0, 0.5])
def test_esam_does_not_compute_the_first_gradients_of_the_tensors_it_does_not_perturb(
    select_fraction,
):
    """The official code's saving: the tensors outside S stop requiring gradients for the
    first backward (counted by gradient hooks); the second computes every one. The updates
    equal the hand computation (no data selection) and, bit for bit, a step that computes
    those gradients and drops them (what DDP and FSDP do)."""
    data, beta, seed = _data(10), 0.5, 7

    def run(freezes: bool) -> tuple[nn.Module, _GradientLog]:
        model = _softmax_regression()
        opt = ESAM(model.parameters(), torch.optim.SGD, rho=0.3, lr=0.1, seed=seed,
                   select_fraction=select_fraction, perturb_fraction=beta)  # fmt: skip
        strategy = SingleProcess(device=CPU)
        strategy.freezes_parameters = freezes  # False: as DDP's
        step = SAMStep(model, opt, nn.CrossEntropyLoss(), CPU, strategy=strategy)
        log = _GradientLog(model)
        for x, y in data:
            step(x, y)
        return model, log

    model, log = run(freezes=True)
    want_w, want_b, draws = _esam_swp_reference(data, 0.3, 0.1, beta, seed)
    every = set(log.names)
    firsts = [{n for n, k in zip(log.names, keep, strict=True) if k} or every for keep in draws]
    assert log.passes == [p for first in firsts for p in (first, every)]
    assert {frozenset(f) for f in firsts} >= {frozenset({"weight"}), frozenset({"bias"})}
    assert all(p.requires_grad for p in model.parameters())
    if select_fraction == 1.0:
        torch.testing.assert_close(model.weight.detach(), want_w)
        torch.testing.assert_close(model.bias.detach(), want_b)
    dropped_model, dropped_log = run(freezes=False)
    assert dropped_log.passes == [every] * 2 * len(data)
    assert torch.equal(model.weight, dropped_model.weight)
    assert torch.equal(model.bias, dropped_model.bias)


def test_perturb_fraction_is_refused_where_the_first_gradient_is_used_beyond_the_ascent():
    for name in ("gsam", "looksam", "interval", "fsam", "rst", "aesam", "wsam"):
        with pytest.raises(ValueError, match="perturb_fraction"):
            VARIANTS[name](_mlp().parameters(), torch.optim.SGD, lr=0.1, perturb_fraction=0.5)
    samplers = {name for name, cls in VARIANTS.items() if cls.samples_weights}
    assert samplers - {"msam"} == set(WEIGHT_PERTURBATION_VARIANTS)  # MSAM: its own refusal


# --------------------------------------------------------------------------- MESA
def _mesa_reference(data, lr, decay, weight, t, start):
    """Du et al.'s MESA by hand: CE + weight T^2 KL(softmax(ema/T) || softmax(out/T)) from
    step ``start``, plain SGD, then ema <- decay ema + (1 - decay) w."""
    model = _softmax_regression()
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    ew, eb = w.clone(), b.clone()
    for step, (x, y) in enumerate(data):
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        out = x @ wg.T + bg
        loss = nn.functional.cross_entropy(out, y)
        if step >= start:
            p_ref = torch.softmax((x @ ew.T + eb) / t, dim=-1)
            log_p = torch.log_softmax(out / t, dim=-1)
            kl = (p_ref * (torch.log(p_ref) - log_p)).sum(-1).mean()
            loss = loss + weight * t * t * kl
        loss.backward()
        w, b = w - lr * wg.grad, b - lr * bg.grad
        ew, eb = decay * ew + (1 - decay) * w, decay * eb + (1 - decay) * b
    return w, b


def test_mesa_adds_the_tempered_kl_towards_the_ema_models_outputs():
    data = _data(5)
    model = _softmax_regression()
    opt = MESA(
        model.parameters(),
        torch.optim.SGD,
        model=model,
        lr=0.5,
        ema_decay=0.6,
        trajectory_weight=0.8,
        temperature=2.0,
        start_step=2,
    )
    step = SAMStep(model, opt, TrajectoryLoss(nn.CrossEntropyLoss(), opt), CPU)
    for x, y in data:
        step(x, y)
    w, b = _mesa_reference(data, 0.5, 0.6, 0.8, 2.0, 2)
    torch.testing.assert_close(model.weight.detach(), w)
    torch.testing.assert_close(model.bias.detach(), b)
    assert step.counts.forward_examples == 5 * 16 + 3 * 16  # the EMA's forwards from step 2
    assert step.counts.backward_examples == 5 * 16


# --------------------------------------------------------------------------- SAF
def _saf_batches(epochs: int):
    """8 examples, batches of 4 in a new order each epoch: (x, y, indices) per step."""
    x, y = _data(2)[0][0][:8], _data(2)[0][1][:8]
    order = torch.Generator().manual_seed(5)
    for _ in range(epochs):
        perm = torch.randperm(8, generator=order)
        for part in perm.split(4):
            yield x[part], y[part], part


def _saf_reference(lr, weight, t, start_epoch, past, epochs):
    """Du et al.'s SAF by hand: record each example's logits in slot e % (past + 1); after
    start_epoch add weight T^2 KL(softmax(stored from e - past) || softmax(out)), plain SGD."""
    model = _softmax_regression()
    w, b = model.weight.detach().clone(), model.bias.detach().clone()
    store = torch.zeros(8, past + 1, 3)
    for step, (x, y, idx) in enumerate(_saf_batches(epochs)):
        epoch = step // 2
        wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
        out = x @ wg.T + bg
        loss = nn.functional.cross_entropy(out, y)
        if epoch > start_epoch:
            p_ref = torch.softmax(store[idx, (epoch - past) % (past + 1)] / t, dim=-1)
            kl = (p_ref * (torch.log(p_ref) - torch.log_softmax(out / t, dim=-1))).sum(-1)
            loss = loss + weight * t * t * kl.mean()
        store[idx, epoch % (past + 1)] = out.detach()
        loss.backward()
        w, b = w - lr * wg.grad, b - lr * bg.grad
    return w, b


def _saf_step(model, **kwargs):
    opt = SAF(model.parameters(), torch.optim.SGD, lr=0.5, num_examples=8, steps_per_epoch=2,
              trajectory_weight=0.7, temperature=2.0, **kwargs)  # fmt: skip
    return SAMStep(model, opt, TrajectoryLoss(nn.CrossEntropyLoss(), opt), CPU)


def test_saf_adds_the_kl_towards_each_examples_outputs_from_past_epochs():
    model = _softmax_regression()
    step = _saf_step(model, start_epoch=1, past_epochs=2)
    for x, y, idx in _saf_batches(6):
        step(x, y, idx)
    w, b = _saf_reference(0.5, 0.7, 2.0, 1, 2, 6)
    torch.testing.assert_close(model.weight.detach(), w)
    torch.testing.assert_close(model.bias.detach(), b)
    assert step.counts.forward_examples == step.counts.backward_examples == 6 * 2 * 4  # SGD's
    assert step.optimizer.store.shape == (8, 3, 3)  # examples x (past_epochs + 1) x classes


def test_saf_resumes_with_its_stored_outputs():
    batches = list(_saf_batches(4))
    model = _softmax_regression()
    step = _saf_step(model, start_epoch=0, past_epochs=1)
    for batch in batches[:3]:
        step(*batch)
    saved = copy.deepcopy((model.state_dict(), step.optimizer.state_dict()))
    for batch in batches[3:]:
        step(*batch)
    resumed_model = _softmax_regression()
    resumed = _saf_step(resumed_model, start_epoch=0, past_epochs=1)
    resumed_model.load_state_dict(saved[0])
    resumed.optimizer.load_state_dict(saved[1])
    for batch in batches[3:]:
        resumed(*batch)
    assert torch.equal(model.weight, resumed_model.weight)
    assert saved[1]["sam"]["store"].abs().sum() > 0


def test_the_loader_hands_out_each_examples_index():
    from sam_train.data.datasets import TensorImageDataset
    from sam_train.data.loaders import build_loaders

    images = torch.arange(10.0).reshape(10, 1, 1, 1).expand(10, 1, 2, 2).contiguous()
    data = TensorImageDataset(images, np.arange(10) % 3)
    loaders = build_loaders(data, data, batch_size=4, eval_batch_size=4, num_workers=0,
                            seed=0, with_indices=True)  # fmt: skip
    seen = []
    for x, y, idx in loaders.train:
        assert torch.equal(x[:, 0, 0, 0], idx.float()) and torch.equal(y, idx % 3)
        seen += idx.tolist()
    assert len(seen) == 8 and len(set(seen)) == 8  # two full batches, no repeats


def test_saf_is_refused_under_several_processes():
    from types import SimpleNamespace

    from sam_train.build import build_run

    cfg = compose_config(["experiment=quickstart", "sam=saf"])
    with pytest.raises(ConfigError, match="keeps every example's outputs in one process"):
        build_run(cfg, SimpleNamespace(world_size=2))


# --------------------------------------------------------------------------- bSAM
def _bsam_reference(data, lr, rho, n, delta, gamma, seed):
    """Möllenhoff & Khan, Algorithm 1, by hand: g at w + noise (std 1/sqrt(N s)), eps = rho g/s,
    g_m <- b1 g_m + (1-b1)(g_eps + delta w), s <- b2 s + (1-b2)(sqrt(s)|g| + delta + gamma),
    w <- w - lr g_m / s; the noise drawn weight first, then bias, from one seeded generator."""
    model = _softmax_regression()
    w = [model.weight.detach().clone(), model.bias.detach().clone()]
    s, g_m = [torch.ones_like(t) for t in w], [torch.zeros_like(t) for t in w]
    gen = torch.Generator().manual_seed(seed)
    for x, y in data:
        noisy = [
            t + torch.randn(t.shape, generator=gen) / (n * si).sqrt()
            for t, si in zip(w, s, strict=True)
        ]
        g = _grad_at(*noisy, x, y)
        g_eps = _grad_at(*[t + rho * gi / si for t, gi, si in zip(w, g, s, strict=True)], x, y)
        for i in range(2):
            g_m[i] = 0.9 * g_m[i] + 0.1 * (g_eps[i] + delta * w[i])
            s[i] = 0.999 * s[i] + 0.001 * (s[i].sqrt() * g[i].abs() + delta + gamma)
            w[i] = w[i] - lr * g_m[i] / s[i]
    return w


def test_bsam_follows_the_papers_algorithm():
    data = _data(4)
    model = _softmax_regression()
    opt = BayesianSAM(model.parameters(), torch.optim.SGD, lr=0.1, rho=0.05, num_examples=40,
                      prior_precision=0.01, damping=0.1, seed=7)  # fmt: skip
    step = SAMStep(model, opt, nn.CrossEntropyLoss(), CPU)
    for x, y in data:
        step(x, y)
    want = _bsam_reference(data, 0.1, 0.05, 40, 0.01, 0.1, 7)
    torch.testing.assert_close(model.weight.detach(), want[0])
    torch.testing.assert_close(model.bias.detach(), want[1])


def test_bsam_differs_from_pytorch_optimizer_by_the_conventions_it_names():
    """pytorch_optimizer 4.1's BSAM, one step, reproduced from its conventions: noise of std
    1/(N s) from the global generator, neither noise nor eps taken back, s from the perturbed
    gradient and squared, momentum averaging delta * g (and its state exists only for
    parameters that had a gradient before the first step); sam-train's step differs."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    x, y = _data(1)[0]
    model = _softmax_regression()
    theirs = pytorch_optimizer.BSAM(model.parameters(), num_data=40, lr=0.1, rho=0.05,
                                    weight_decay=0.01, damping=0.1, foreach=False)  # fmt: skip

    def closure():
        theirs.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    closure()  # its state is created for parameters with a gradient (KeyError 's' otherwise)
    torch.manual_seed(3)
    theirs.step(closure)
    w0 = _softmax_regression()
    w = [w0.weight.detach().clone(), w0.bias.detach().clone()]
    torch.manual_seed(3)
    noisy = [t + torch.normal(0.0, torch.full_like(t, 1 / 40)) for t in w]
    g = _grad_at(*noisy, x, y)
    moved = [t + 0.05 * gi for t, gi in zip(noisy, g, strict=True)]  # s = 1 at the first step
    g_eps = _grad_at(*moved, x, y)
    for i, got in enumerate((model.weight, model.bias)):
        s = 0.999 + 0.001 * (g_eps[i].abs() + 0.01 + 0.1) ** 2
        want = moved[i] - 0.1 * (0.1 * 0.01 * g_eps[i]) / s
        torch.testing.assert_close(got.detach(), want)
    ours = _bsam_reference([(x, y)], 0.1, 0.05, 40, 0.01, 0.1, 3)
    assert not torch.allclose(model.weight.detach(), ours[0])


# --------------------------------------------------------------------------- the step
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def _data(steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(steps)
    ]


#: variant name -> (its keyword arguments, on a momentum-SGD base with rho 0.1)
STEP_CASES = {
    "msam": {},
    "rst": {"probability": 0.5, "seed": 3},
    "aesam": {"threshold_start": 0.0, "threshold_end": 0.0},
    "wsam": {"gamma": 0.8},
    "esam": {"select_fraction": 0.5, "perturb_fraction": 0.5},
    "ksam": {"select_fraction": 0.25},
    "mesa": {"ema_decay": 0.5, "start_step": 1},
    "bsam": {"num_examples": 50, "seed": 4},
}


def _step(name: str, model: nn.Module) -> SAMStep:
    momentum = 0.0 if name == "bsam" else 0.9
    return sam_step(model, VARIANTS[name], {"rho": 0.1, "momentum": momentum, **STEP_CASES[name]})


@pytest.mark.parametrize("name", list(STEP_CASES))
def test_a_resumed_variant_continues_bit_identically(name):
    """Crash after 3 steps, rebuild from the model's and the optimizer's state dicts: the next
    3 steps equal the uninterrupted run's."""
    data = _data(6)
    model = _model()
    step = _step(name, model)
    model.train()
    for x, y in data[:3]:
        step(x, y)
    saved = copy.deepcopy((model.state_dict(), step.optimizer.state_dict()))
    for x, y in data[3:]:
        step(x, y)

    resumed_model = _model()
    resumed = _step(name, resumed_model)
    resumed_model.load_state_dict(saved[0])
    resumed.optimizer.load_state_dict(saved[1])
    resumed_model.train()
    for x, y in data[3:]:
        resumed(x, y)
    for p, q in zip(model.state_dict().values(), resumed_model.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    if "sam" not in saved[1]:  # MSAM: the base optimizer's momentum is its whole state
        return
    fresh_model = _model()  # the weights and momentum, without the variant's own state
    fresh = _step(name, fresh_model)
    fresh_model.load_state_dict(saved[0])
    fresh.optimizer.base_optimizer.load_state_dict(
        {k: v for k, v in saved[1].items() if k != "sam"}
    )
    fresh_model.train()
    for x, y in data[3:]:
        fresh(x, y)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(model.state_dict().values(), fresh_model.state_dict().values(), strict=True)
    ), "the variant's state must matter, or this test proves nothing"


@pytest.mark.parametrize("name", list(STEP_CASES))
def test_the_step_counts_the_passes_it_runs(name):
    """The counts results.json reports equal the passes the model really ran (hooks)."""
    model = _model()
    forwards, backwards = [], []

    def record(module, args, out):  # the first layer sees every example of every pass
        forwards.append(len(args[0]))

    def record_backward(module, args, out):  # every backward starts at the last layer (ESAM's
        if out.requires_grad:  # stochastic weight perturbation may stop it before the first)
            out.register_hook(lambda grad: backwards.append(len(grad)))

    model[0].register_forward_hook(record)
    model[-1].register_forward_hook(record_backward)
    step = _step(name, model)
    model.train()
    for x, y in _data(8):
        step(x, y)
    counts = step.counts
    assert (counts.steps, counts.examples) == (8, 8 * 16)
    assert (counts.forward_examples, counts.backward_examples) == (sum(forwards), sum(backwards))
    if name == "mesa":  # the EMA model's forwards from step 1 (the EMA is a copy: hooked too)
        assert len(forwards) == 8 + 7 and counts.ascent_steps == 0
    elif VARIANTS[name].single_pass:
        assert len(forwards) == 8 and counts.ascent_steps == 7  # no momentum at step 1
    elif step.optimizer.selects_examples:
        assert len(forwards) == 3 * 8 and counts.ascent_steps == 8
        assert sum(backwards) < 2 * 8 * 16
    else:
        assert counts.ascent_steps == len(forwards) - 8
    summary = counts.summary()
    expected = (sum(forwards) + 2 * sum(backwards)) / (3 * 8 * 16)
    assert summary["passes_per_step"] == round(expected, 4)
    assert summary["ascent_fraction"] == round(counts.ascent_steps / 8, 4)
    if name != "esam":  # every weight gradient in every backward (ESAM's: tested below)
        assert summary["weight_grad_fraction_per_step"] == round(sum(backwards) / (8 * 16), 4)


def test_msam_runs_one_forward_and_one_backward_per_step():
    model = _model()
    forwards, backwards = [], []
    model.register_forward_hook(lambda *_: forwards.append(1))
    model[0].weight.register_hook(lambda g: backwards.append(1))
    step = _step("msam", model)
    model.train()
    for x, y in _data(4):
        assert step(x, y).finite
    assert (len(forwards), len(backwards)) == (4, 4)


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sam=msam", "optimizer.momentum=0"], "set optimizer.momentum above 0"),
        (
            ["sam=msam", "optimizer=adamw", "optimizer.betas=[0,0.999]"],
            "set optimizer.betas[0] above 0",
        ),
        (["sam=msam", "sam.adaptive=true"], "sam.adaptive does not apply"),
        (["sam=msam", "sam.inner_steps=2"], "sam.inner_steps does not apply"),
        (["sam=esam", "trainer.strategy=fsdp"], "use trainer.strategy=ddp"),
        (["sam=ksam", "trainer.strategy=fsdp"], "use trainer.strategy=ddp"),
        (["sam=aesam", "trainer.amp=fp16"], "use trainer.amp=bf16"),
        (["sam=wsam", "trainer.amp=fp16"], "use trainer.amp=bf16"),
        (["sam=wsam", "sam.gamma=1"], "sam.gamma must be in [0, 1)"),
        (["sam=ksam", "trainer.accum_steps=2"], "set trainer.accum_steps=1"),
        (["sam=esam", "augment.mixup_alpha=0.2"], "set augment.mixup_alpha=0"),
        (["sam=esam", "trainer.amp=fp16"], "set trainer.amp=bf16 or none"),
        (["sam=ksam", "sam.select_fraction=0"], "sam.select_fraction must be in (0, 1]"),
        (["sam=mesa", "trainer.accum_steps=2"], "set trainer.accum_steps=1"),
        (["sam=mesa", "trainer.strategy=fsdp"], "use trainer.strategy=ddp"),
        (["sam=mesa", "sam.temperature=0"], "sam.temperature must be > 0"),
        (["sam=saf", "trainer.accum_steps=2"], "set trainer.accum_steps=1"),
        (["sam=saf", "sam.past_epochs=0"], "sam.past_epochs must be > 0"),
        (["sam=saf", "trainer.strategy=fsdp"], "use trainer.strategy=ddp"),
        (["sam=bsam"], "use optimizer=sgd with optimizer.momentum=0"),
        (
            ["sam=bsam", "optimizer.momentum=0", "optimizer.weight_decay=0", "sam.p=inf"],
            "sam.p does not apply",
        ),
        (["sam=rst", "sam.probability=1.5"], "sam.probability must be in [0, 1]"),
        (["sam=rst", "sam.probability_end=-0.1"], "sam.probability_end must be in [0, 1]"),
        (
            ["sam=rst", "sam.probability_schedule=exp"],
            "sam.probability_schedule='exp' is not one of: constant, linear, cosine, step",
        ),
        (
            ["sam=rst", "sam.probability_schedule=cosine"],
            "sam.probability_schedule=cosine needs sam.probability_end",
        ),
        (
            ["sam=rst", "sam.probability_end=0.1"],
            "sam.probability_end applies to a schedule: set sam.probability_schedule=linear",
        ),
        (["sam=sam", "sam.probability_schedule=step"], "sam.probability_schedule applies to"),
        (
            ["sam=looksam", "sam.perturb_fraction=0.5"],
            "sam.perturb_fraction (ESAM's stochastic weight perturbation) works with sam=sam, "
            "sam=esam, sam=ksam, not sam=looksam",
        ),
        (["sam=sam", "sam.probability=0.5"], "sam.probability applies to sam=rst"),
        (["sam=aesam", "sam.ema_decay=1"], "sam.ema_decay must be in [0, 1)"),
    ],
)
def test_efficient_variants_refuse_what_they_cannot_do_in_one_line(overrides, message):
    assert message in config_refusal(overrides)


# --------------------------------------------------------------------------- crash and resume
CHECKPOINT_EVERY = 4  # steps: a crash after step 25 resumes from step 24's, mid-epoch


def _resumes_like_the_whole_run(args: list[str], crashed: Path, whole: Path, at: int) -> None:
    """``args`` crashed into ``crashed`` after step ``at``: resumed from the checkpoint before,
    it ends with the weights of the uninterrupted run in ``whole``."""
    assert _last(crashed)["global_step"] == at - at % CHECKPOINT_EVERY
    code, err = run_in_process([*args, "resume=auto"])
    assert code == 0, err
    _assert_same_weights(_last(crashed)["model"], _last(whole)["model"])


@pytest.mark.slow
@pytest.mark.parametrize(
    "variant",
    [
        ["sam=rst"],
        # mid-schedule: the crash comes at step 25 of p_t falling from 1 to 0.2
        [
            "sam=rst",
            "sam.probability=1",
            "sam.probability_end=0.2",
            "sam.probability_schedule=linear",
        ],
        ["sam=aesam"],
        ["sam=mesa", "sam.start_epoch=1", "sam.ema_decay=0.9"],
        ["sam=saf", "sam.start_epoch=0", "sam.past_epochs=1"],
        ["sam=bsam", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.lr=0.5"],
        ["sam=esam"],
    ],
    ids=" ".join,
)
def test_a_crashed_run_resumes_bit_identically(cli_in_process, inject, tmp_path, variant):  # noqa: F811
    """The trainer's own checkpoint (RST's trials, AE-SAM's statistics, MESA's EMA, SAF's
    stored outputs, filled through the loader's example indices, bSAM's noise and precision,
    ESAM's draws of the tensors it perturbs):
    a run that crashes after step 25 and resumes from its step-24 checkpoint ends with the
    uninterrupted run's weights and variant state (test_lifecycle's helpers)."""
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    code, err = cli_in_process([*BASE, *variant, f"hydra.run.dir={whole}"])
    assert code == 0, err

    def crash() -> None:
        raise RuntimeError("simulated crash")

    inject(_Act(25, crash))
    args = [*BASE, *variant, f"checkpoint.every_n_steps={CHECKPOINT_EVERY}"]
    args.append(f"hydra.run.dir={crashed}")
    code, err = cli_in_process(args)
    assert code == 1 and "simulated crash" in err
    _resumes_like_the_whole_run(args, crashed, whole, 25)
    ours, theirs = _last(crashed)["optimizer"]["sam"], _last(whole)["optimizer"]["sam"]
    assert str(ours) == str(theirs)  # counters, statistics, generator states, EMA


def _killed_after(step: int, args: list[str]) -> int | None:
    """``sam-train ARGS`` in a forked child of this process (a process of its own, without
    importing torch again), SIGKILLed right after step ``step``'s callbacks: no handler,
    flush or atexit runs. Returns the child's exit code."""

    def child() -> None:
        kill = _Act(step, lambda: os.kill(os.getpid(), signal.SIGKILL))
        original = train_module.build_callbacks
        train_module.build_callbacks = lambda *a, **k: [*original(*a, **k), kill]
        run_in_process(args)

    sys.stdout.flush()
    sys.stderr.flush()  # or the child would write this process's buffers again
    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join()
    return process.exitcode


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["msam", "wsam", "ksam"])
def test_a_killed_process_resumes_bit_identically(tmp_path, variant):
    """A real process killed mid-run (SIGKILL after step 13 of one 21-step epoch: half the
    steps of the test above) and resumed from its step-12 checkpoint ends with the
    uninterrupted run's weights and optimizer state: MSAM's momentum (its perturbation's
    direction), WSAM's and K-SAM's base optimizer."""
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run = [*BASE, "trainer.epochs=1", "scheduler.warmup_epochs=0", f"sam={variant}"]
    code, err = run_in_process([*run, f"hydra.run.dir={whole}"])
    assert code == 0, err
    args = [*run, f"checkpoint.every_n_steps={CHECKPOINT_EVERY}", f"hydra.run.dir={killed}"]
    assert _killed_after(13, args) == -signal.SIGKILL
    _resumes_like_the_whole_run(args, killed, whole, 13)
    ours, ours_spec = tree_flatten(_last(killed)["optimizer"])
    theirs, theirs_spec = tree_flatten(_last(whole)["optimizer"])
    assert ours_spec == theirs_spec
    for a, b in zip(ours, theirs, strict=True):
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


def test_weight_grad_fraction_is_one_for_sgd_and_two_for_sam():
    """Every backward computes every weight gradient: SGD's one pass, SAM's two."""
    for step, want in ((sgd_step(_model()), 1.0), (sam_step(_model()), 2.0)):
        train(step, _data(3))
        assert step.counts.summary()["weight_grad_fraction_per_step"] == want


def _esam_weight_grad_fraction(model: nn.Module, seed: int, beta: float, steps: int) -> float:
    """ESAM's first backwards by hand: each tensor drawn with probability beta from ``seed``'s
    generator (all of them when none is drawn); the share of their elements, plus 1 for the
    second backward, averaged over the steps (the whole batch in both passes)."""
    sizes = [p.numel() for p in model.parameters()]
    gen, total = torch.Generator().manual_seed(seed), 0.0
    for _ in range(steps):
        draws = torch.rand(len(sizes), generator=gen)
        picked = [n for n, u in zip(sizes, draws, strict=True) if u < beta]
        total += sum(picked or sizes) / sum(sizes) + 1
    return total / steps


@pytest.mark.parametrize("freezes", [True, False], ids=["one process", "computed and dropped"])
def test_esam_weight_grad_fraction_counts_the_perturbed_tensors_elements(freezes):
    """ESAM with beta 0.5 freezes the tensors it does not perturb for the first backward: the
    fraction is the drawn tensors' share of the elements plus the second backward's 1. Where
    they are computed and dropped (DDP, FSDP) it is what was computed: 2."""
    model, seed, steps = _model(), 7, 8
    strategy = SingleProcess(device=CPU)
    strategy.freezes_parameters = freezes  # False: as DDP's and FSDP's
    options = {"seed": seed, "select_fraction": 1.0, "perturb_fraction": 0.5}
    step = sam_step(model, ESAM, options, strategy=strategy)
    log = _GradientLog(model)
    train(step, _data(steps))
    got = step.counts.summary()["weight_grad_fraction_per_step"]
    sizes = {name: p.numel() for name, p in model.named_parameters()}
    logged = sum(sum(sizes[n] for n in names) for names in log.passes) / sum(sizes.values())
    assert got == round(logged / steps, 4)  # what the gradient hooks saw computed
    if freezes:
        assert got == round(_esam_weight_grad_fraction(model, seed, 0.5, steps), 4)
        assert 1.0 < got < 2.0
    else:
        assert got == 2.0
    assert step.counts.summary()["passes_per_step"] == 2.0  # blind to the skipped gradients


def test_esam_data_selection_counts_the_second_backwards_examples():
    """With data selection the second backward computes every weight gradient on part of the
    batch: it counts by its examples, as ``backward_examples_per_step`` does."""
    model, seed, steps = _model(), 7, 6
    options = {"seed": seed, "select_fraction": 0.5, "perturb_fraction": 0.5}
    step = sam_step(model, ESAM, options)
    train(step, _data(steps))
    counts, batch = step.counts, 16
    second = (counts.backward_examples - steps * batch) / (steps * batch)
    first = _esam_weight_grad_fraction(model, seed, 0.5, steps) - 1
    assert 0 < second < 1
    assert counts.summary()["weight_grad_fraction_per_step"] == round(first + second, 4)
