"""Each SAM variant and option against an independent NumPy computation of its update rule.

The problems are quadratics L(w) = 1/2 w^T A w (gradient A w), where every rule has a closed
form; the NumPy references below are written from the papers' algorithms, not from the code.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config, config_refusal, subprocess_env, torchrun_command
from sam_reference import CPU, MaskRecorder, closure_steps
from torch import nn
from variants_ddp_worker import CASES

from sam_train.build import build_optimizer
from sam_train.config import SAM_VARIANTS, validate
from sam_train.profiling import Allocations
from sam_train.sam import GSAM, SAM, VARIANTS, FriendlySAM, IntervalSAM, LookSAM
from sam_train.step import SAMStep
from sam_train.train import train


def _quadratic(seed: int = 0, dim: int = 6):
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(dim, dim))
    return m @ m.T + dim * np.eye(dim), rng.normal(size=dim)


def _closure(a: np.ndarray, w: torch.Tensor, calls: list | None = None):
    a_t = torch.tensor(a, dtype=torch.float64)

    def closure():
        if calls is not None:
            calls.append(1)
        loss = 0.5 * w @ a_t @ w
        loss.backward()
        return loss

    return closure


def _run(opt_factory, a, w0, steps: int = 1):
    """``steps`` optimizer steps on the quadratic; returns the weights and closure calls."""
    w = torch.tensor(w0, requires_grad=True)
    opt = opt_factory([w])
    calls: list = []
    closure = _closure(a, w, calls)
    for _ in range(steps):
        opt.zero_grad()
        closure()
        opt.step(closure)
    return w.detach().numpy(), len(calls), opt


def _unit(v):
    return v / np.linalg.norm(v)


# --------------------------------------------------------------------------- SAM options
def test_p_inf_perturbs_by_rho_times_sign_of_the_gradient():
    a, w0 = _quadratic()
    rho, lr = 0.1, 0.01
    expected = w0 - lr * a @ (w0 + rho * np.sign(a @ w0))
    got, _, _ = _run(lambda p: SAM(p, torch.optim.SGD, rho=rho, p=float("inf"), lr=lr), a, w0)
    np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_asam_with_p_inf_scales_the_sign_by_the_weights():
    a, w0 = _quadratic(1)
    rho, lr, eta = 0.5, 0.01, 0.01
    eps = rho * (np.abs(w0) + eta) * np.sign(a @ w0)
    got, _, _ = _run(
        lambda p: SAM(p, torch.optim.SGD, rho=rho, adaptive=True, eta=eta, p=float("inf"), lr=lr),
        a,
        w0,
    )
    np.testing.assert_allclose(got, w0 - lr * a @ (w0 + eps), rtol=1e-10)


def test_include_weight_decay_adds_the_l2_gradient_to_the_ascent_of_decayed_groups_only():
    a, w0 = _quadratic(2, dim=4)
    rho, lr, wd = 0.2, 0.01, 0.3
    w1 = torch.tensor(w0[:2], requires_grad=True)
    w2 = torch.tensor(w0[2:], requires_grad=True)
    opt = SAM(
        [{"params": [w1], "weight_decay": wd}, {"params": [w2], "weight_decay": 0.0}],
        torch.optim.SGD,
        rho=rho,
        include_weight_decay=True,
        lr=lr,
    )
    a_t = torch.tensor(a)

    def closure():
        w = torch.cat([w1, w2])
        loss = 0.5 * w @ a_t @ w
        loss.backward()
        return loss

    closure()
    opt.step(closure)
    ascent = a @ w0 + wd * np.r_[w0[:2], 0.0, 0.0]
    eps = rho * _unit(ascent)
    expected = w0 - lr * (a @ (w0 + eps) + wd * np.r_[w0[:2], 0.0, 0.0])
    got = torch.cat([w1, w2]).detach().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-10)


@pytest.mark.parametrize("inner_steps", [2, 3])
def test_inner_steps_take_k_normalised_ascent_steps_of_length_rho_over_k(inner_steps):
    a, w0 = _quadratic(3)
    rho, lr = 0.3, 0.01
    eps = np.zeros_like(w0)
    for _ in range(inner_steps):
        eps = eps + rho / inner_steps * _unit(a @ (w0 + eps))
    expected = w0 - lr * a @ (w0 + eps)
    got, calls, _ = _run(
        lambda p: SAM(p, torch.optim.SGD, rho=rho, inner_steps=inner_steps, lr=lr), a, w0
    )
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    assert calls == 1 + inner_steps  # the gradient at w, K - 1 extra ascent passes, the last


def test_inner_steps_without_a_closure_is_an_error():
    w = torch.ones(2, requires_grad=True)
    opt = SAM([w], torch.optim.SGD, inner_steps=2, lr=0.1)
    w.grad = torch.ones(2)
    with pytest.raises(RuntimeError, match="ascent_closure"):
        opt.first_step()


def test_perturb_fraction_perturbs_each_tensor_with_probability_beta_as_esams_official_code():
    """dydjw9/Efficient_SAM's stochastic weight perturbation: each tensor is in S with
    probability beta, eps = rho / beta * g_S / ||g_S|| on S and 0 elsewhere (the first-pass
    gradients outside S are never needed); a new S every step."""
    torch.manual_seed(0)
    beta, rho, count = 0.3, 0.5, 2000
    ws = [torch.zeros(3, dtype=torch.float64, requires_grad=True) for _ in range(count)]
    opt = SAM(ws, torch.optim.SGD, rho=rho, perturb_fraction=beta, lr=0.1)
    grads = torch.linspace(1.0, 2.0, 3 * count, dtype=torch.float64).reshape(count, 3)
    drawn = []
    for _ in range(2):
        torch.manual_seed(123)  # the step replays the global generator: draws must not repeat
        for w, g in zip(ws, grads, strict=True):
            w.grad = g.clone()
        opt.first_step()
        eps = torch.stack([w.detach().clone() for w in ws])
        kept = (eps != 0).any(dim=1)
        assert torch.equal((eps != 0).all(dim=1), kept)  # whole tensors in or out
        torch.testing.assert_close(eps[kept], rho / beta * grads[kept] / grads[kept].norm())
        assert abs(kept.double().mean().item() - beta) < 0.04  # 4 standard deviations
        drawn.append(kept)
        opt.restore()
    assert not torch.equal(drawn[0], drawn[1])
    assert all(torch.equal(w.detach(), torch.zeros(3, dtype=torch.float64)) for w in ws)


def test_perturb_fraction_masks_are_reproducible_from_the_global_seed():
    def masks():
        torch.manual_seed(5)
        w = torch.zeros(50, requires_grad=True)
        opt = SAM([w], torch.optim.SGD, perturb_fraction=0.5, lr=0.1)
        w.grad = torch.ones(50)
        opt.first_step()
        return w.detach().clone()

    assert torch.equal(masks(), masks())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"p": 1}, "p must be 2 or inf"),
        ({"perturb_fraction": 0.0}, "perturb_fraction"),
        ({"inner_steps": 0}, "inner_steps"),
    ],
)
def test_bad_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAM([torch.zeros(1, requires_grad=True)], torch.optim.SGD, lr=0.1, **kwargs)


# --------------------------------------------------------------------------- GSAM
def _gsam_reference(a, w0, rho, lr, alpha):
    g = a @ w0
    g_p = a @ (w0 + rho * _unit(g))
    g_perp = g - (g @ g_p) / (g_p @ g_p) * g_p
    return w0 - lr * (g_p - alpha * g_perp)


def test_gsam_applies_the_perturbed_gradient_minus_alpha_times_the_orthogonal_part():
    a, w0 = _quadratic(4)
    rho, lr, alpha = 0.3, 0.01, 0.5
    got, calls, _ = _run(
        lambda p: GSAM(p, torch.optim.SGD, rho=rho, alpha=alpha, rho_min=rho, lr=lr), a, w0
    )
    np.testing.assert_allclose(got, _gsam_reference(a, w0, rho, lr, alpha), rtol=1e-10)
    assert calls == 2
    sam, _, _ = _run(lambda p: SAM(p, torch.optim.SGD, rho=rho, lr=lr), a, w0)
    assert not np.allclose(got, sam)


def test_gsam_rho_follows_the_learning_rate_between_rho_min_and_rho():
    a, w0 = _quadratic(5)
    rho, rho_min, lr_max, lr_min, alpha = 0.4, 0.1, 0.1, 0.02, 0.3
    w = torch.tensor(w0, requires_grad=True)
    opt = GSAM(
        [w], torch.optim.SGD, rho=rho, rho_min=rho_min, lr_min=lr_min, alpha=alpha, lr=lr_max
    )
    lr_now = 0.06  # halfway between lr_min and lr_max
    opt.param_groups[0]["lr"] = lr_now
    assert opt.current_rho() == [pytest.approx(rho_min + 0.5 * (rho - rho_min))]
    closure = _closure(a, w)
    closure()
    opt.step(closure)
    expected = _gsam_reference(a, w0, 0.25, lr_now, alpha)
    np.testing.assert_allclose(w.detach().numpy(), expected, rtol=1e-10)


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_gsam_reads_the_peak_learning_rate_a_scheduler_records():
    w = torch.zeros(2, requires_grad=True)
    opt = GSAM([w], torch.optim.SGD, rho=0.2, rho_min=0.0, lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.25)
    sched.step()
    assert opt.param_groups[0]["initial_lr"] == 0.1
    assert opt.current_rho() == [pytest.approx(0.2 * 0.25)]


# --------------------------------------------------------------------------- LookSAM
def _looksam_reference(a, w0, rho, lr, k, alpha, steps, parts=(slice(None),)):
    """``parts``: the slices of w projected and rescaled on their own (one: all weights)."""
    w, g_v = w0.copy(), None
    for t in range(steps):
        g = a @ w
        if t % k == 0:
            g_s = a @ (w + rho * _unit(g))
            g_v = np.concatenate([g_s[s] - (g_s[s] @ g[s]) / (g[s] @ g[s]) * g[s] for s in parts])
            update = g_s
        else:
            update = np.concatenate(
                [
                    g[s] + alpha * np.linalg.norm(g[s]) / np.linalg.norm(g_v[s]) * g_v[s]
                    for s in parts
                ]
            )
        w = w - lr * update
    return w


def test_looksam_reuses_the_orthogonal_direction_between_sam_steps():
    a, w0 = _quadratic(6)
    rho, lr, k, alpha, steps = 0.3, 0.02, 3, 0.7, 7
    got, calls, _ = _run(
        lambda p: LookSAM(p, torch.optim.SGD, rho=rho, k=k, alpha=alpha, lr=lr), a, w0, steps
    )
    expected = _looksam_reference(a, w0, rho, lr, k, alpha, steps)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert calls == steps + 3  # one pass per step, a second one on steps 0, 3 and 6


def _run_split(opt_factory, a, w0, split: int, steps: int):
    """``_run`` with the weights in two tensors, w[:split] and w[split:]."""
    ws = [
        torch.tensor(w0[:split], requires_grad=True),
        torch.tensor(w0[split:], requires_grad=True),
    ]
    opt, a_t = opt_factory(ws), torch.tensor(a)

    def closure():
        w = torch.cat(ws)
        loss = 0.5 * w @ a_t @ w
        loss.backward()
        return loss

    for _ in range(steps):
        opt.zero_grad()
        closure()
        opt.step(closure)
    return torch.cat(ws).detach().numpy()


@pytest.mark.parametrize("per_tensor", [True, False], ids=["per tensor", "all weights"])
def test_looksam_projects_and_rescales_each_tensor_or_all_weights_as_one(per_tensor):
    """Two tensors: per tensor (the default, as the public implementations), each tensor's
    reused term is alpha times its own gradient's norm; over all weights (the paper's vectors)
    alpha ||g|| is shared by both. The two rules give different weights here."""
    a, w0 = _quadratic(3)
    rho, lr, k, alpha, steps, split = 0.3, 0.02, 3, 0.7, 7, 2
    got = _run_split(
        lambda p: LookSAM(
            p, torch.optim.SGD, rho=rho, k=k, alpha=alpha, lr=lr, per_tensor=per_tensor
        ),
        a,
        w0,
        split,
        steps,
    )
    tensors = (slice(0, split), slice(split, None))
    expected, other = (
        _looksam_reference(a, w0, rho, lr, k, alpha, steps, parts)
        for parts in ((tensors, (slice(None),)) if per_tensor else ((slice(None),), tensors))
    )
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert not np.allclose(got, other, rtol=1e-6)


def test_looksam_matches_pytorch_optimizer_on_a_small_network():
    """pytorch_optimizer 4.1's LookSAM (per-tensor g_v, as sam-train's default), same model,
    data and momentum SGD, SAM steps and reused ones: the same weights."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    models = [_tiny_model(), _tiny_model()]
    same = {"rho": 0.1, "k": 2, "alpha": 0.7, "lr": 0.05, "momentum": 0.9}
    ours = LookSAM(models[0].parameters(), torch.optim.SGD, **same)
    theirs = pytorch_optimizer.LookSAM(models[1].parameters(), torch.optim.SGD, **same)
    for model, opt in zip(models, (ours, theirs), strict=True):
        closure_steps(model, opt, 5, seed=0)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_tensor", [True, False], ids=["per tensor", "all weights"])
def test_looksam_reuse_steps_allocate_nothing_of_the_weights_size(per_tensor):
    """Between SAM steps, alpha ||g|| / ||g_v|| g_v is formed in the buffers LookSAM already
    holds: no new tensor larger than one float per parameter tensor (the norms)."""
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 3))
    opt = LookSAM(model.parameters(), torch.optim.SGD, rho=0.1, k=3, lr=0.05, per_tensor=per_tensor)
    x, y = torch.randn(8, 16), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])

    def backward():
        nn.functional.cross_entropy(model(x), y).backward()

    backward()
    assert opt.first_step(zero_grad=True)  # the SAM step: g_v and the buffers exist after it
    backward()
    opt.second_step(zero_grad=True)
    backward()
    before = [p.detach().clone() for p in model.parameters()]
    with Allocations() as reuse:
        assert not opt.first_step(zero_grad=True)
        opt.second_step(zero_grad=True)
    assert not all(map(torch.equal, before, model.parameters()))  # the step was taken
    assert reuse.largest <= 4 * len(before), reuse.largest


# --------------------------------------------------------------------------- interval
def test_interval_sam_takes_sam_steps_every_k_and_plain_steps_otherwise():
    a, w0 = _quadratic(7)
    rho, lr, k, steps = 0.3, 0.02, 2, 5
    w = w0.copy()
    for t in range(steps):
        g = a @ w
        w = w - lr * (a @ (w + rho * _unit(g)) if t % k == 0 else g)
    got, calls, _ = _run(
        lambda p: IntervalSAM(p, torch.optim.SGD, rho=rho, k=k, lr=lr), a, w0, steps
    )
    np.testing.assert_allclose(got, w, rtol=1e-10)
    assert calls == steps + 3


# --------------------------------------------------------------------------- Friendly SAM
def test_friendly_sam_ascends_along_the_gradient_minus_its_ema():
    a, w0 = _quadratic(8)
    rho, lr, sigma, lam, steps = 0.3, 0.05, 0.8, 0.6, 4
    w, m = w0.copy(), None
    for _ in range(steps):
        g = a @ w
        if m is None:
            d, m = g, g.copy()
        else:
            d = g - sigma * m
            m = lam * m + (1 - lam) * g
        w = w - lr * a @ (w + rho * _unit(d))
    got, _, _ = _run(
        lambda p: FriendlySAM(p, torch.optim.SGD, rho=rho, sigma=sigma, ema_decay=lam, lr=lr),
        a,
        w0,
        steps,
    )
    np.testing.assert_allclose(got, w, rtol=1e-10)
    sam, _, _ = _run(lambda p: SAM(p, torch.optim.SGD, rho=rho, lr=lr), a, w0, steps)
    assert not np.allclose(got, sam)


# --------------------------------------------------------------------------- resume
def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LookSAM, {"k": 3}),
        (IntervalSAM, {"k": 2}),
        (FriendlySAM, {}),
        (SAM, {"perturb_fraction": 0.5}),
    ],
)
def test_variant_state_survives_a_state_dict_round_trip(cls, kwargs):
    model = _tiny_model()
    opt = cls(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **kwargs)
    closure_steps(model, opt, 4, seed=1)
    state = copy.deepcopy(opt.state_dict())
    assert "sam" in state and "momentum_buffer" in state["state"][0]

    resumed_model = copy.deepcopy(model)
    resumed = cls(
        resumed_model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **kwargs
    )
    resumed.load_state_dict(state)
    fresh_model = copy.deepcopy(model)  # same weights and momentum, but no variant state
    fresh = cls(fresh_model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **kwargs)
    fresh.base_optimizer.load_state_dict({k: v for k, v in state.items() if k != "sam"})
    for m, o in ((model, opt), (resumed_model, resumed), (fresh_model, fresh)):
        closure_steps(m, o, 3, seed=2)
    for p, q in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert any(
        not torch.equal(p, q)
        for p, q in zip(model.parameters(), fresh_model.parameters(), strict=True)
    ), "the variant state must matter, or this test proves nothing"


# --------------------------------------------------------------------------- the step
def _step_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), MaskRecorder(), nn.Linear(16, 3))


def _batches(n):
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))] * n


@pytest.mark.parametrize(
    ("cls", "kwargs", "steps", "passes"),
    [
        (None, {}, 3, 3),  # the base optimizer alone: one pass
        (SAM, {}, 2, 2 * 2),
        (LookSAM, {"k": 3}, 6, 6 + 2),
        (IntervalSAM, {"k": 2}, 5, 5 + 3),
        (SAM, {"inner_steps": 3}, 2, 2 * 4),
        (GSAM, {}, 2, 4),
        (FriendlySAM, {}, 2, 4),
    ],
)
def test_step_runs_exactly_the_forward_passes_each_variant_needs(cls, kwargs, steps, passes):
    model = _step_model()
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    if cls is None:
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        opt = cls(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, **kwargs)
    step = SAMStep(model, opt, nn.CrossEntropyLoss(), CPU)
    assert step.uses_sam == (cls is not None)
    model.train()
    for x, y in _batches(steps):
        assert step(x, y).finite
    assert len(calls) == passes
    assert step.steps_taken == steps


def test_first_pass_is_synced_when_no_second_pass_follows_or_gradients_are_combined():
    w = [torch.zeros(1, requires_grad=True)]
    interval = IntervalSAM(w, torch.optim.SGD, k=2, lr=0.1)
    pattern = []
    for _ in range(4):
        pattern.append(interval.needs_synced_first_pass())
        w[0].grad = torch.ones(1)
        if interval.first_step():
            interval.restore()
    assert pattern == [False, True, False, True]
    assert GSAM(w, torch.optim.SGD, lr=0.1).needs_synced_first_pass()
    assert LookSAM(w, torch.optim.SGD, lr=0.1).needs_synced_first_pass()
    assert not SAM(w, torch.optim.SGD, lr=0.1).needs_synced_first_pass()


#: The arguments a variant cannot do without, and the base optimizer's momentum it needs.
_REQUIRED = {"saf": {"num_examples": 8, "steps_per_epoch": 2}, "bsam": {"num_examples": 8}}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_is_called_as_sam_is_and_takes_its_own_knobs_by_keyword(name):
    """params, the base optimizer and SAM's options pass through a variant unchanged (rho
    positional, as davda54/sam's SAM takes it); a sixth positional argument is refused."""
    model = _tiny_model()
    kwargs = {**_REQUIRED.get(name, {}), "momentum": 0.9 if name == "msam" else 0.0}
    if name == "mesa":
        kwargs["model"] = model
    opt = VARIANTS[name](model.parameters(), torch.optim.SGD, 0.2, lr=0.1, **kwargs)
    assert [group["rho"] for group in opt.param_groups] == [0.2]
    assert opt.base_optimizer.param_groups is opt.param_groups
    with pytest.raises(TypeError):
        VARIANTS[name](model.parameters(), torch.optim.SGD, 0.2, False, 0.01, 5, lr=0.1)


def test_config_names_every_variant():
    assert set(SAM_VARIANTS) == {"none", *VARIANTS}


# --------------------------------------------------------------------------- the quickstart
@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["sam=gsam"],
        ["sam=looksam"],
        ["sam=interval"],
        ["sam=fsam"],
        ["sam=msam"],
        ["sam=rst"],
        ["sam=aesam"],
        ["sam=wsam"],
        ["sam=esam"],
        ["sam=ksam"],
        ["sam=mesa", "sam.start_epoch=1", "sam.ema_decay=0.9"],
        ["sam=saf", "sam.start_epoch=0", "sam.past_epochs=1"],
        ["sam=bsam", "optimizer.momentum=0", "optimizer.weight_decay=0", "optimizer.lr=0.5"],
        ["sam=asam"],
        ["sam.p=inf", "sam.rho=0.0002"],  # ||eps||_2 = rho * sqrt(#weights), about 0.06 here
        ["sam.perturb_fraction=0.5", "sam.include_weight_decay=true", "sam.inner_steps=2"],
    ],
    ids=lambda overrides: " ".join(overrides),
)
def test_every_variant_trains_the_quickstart(overrides, tmp_path):
    cfg = compose_config(
        [
            "experiment=quickstart",
            "trainer.epochs=2",
            "scheduler.warmup_epochs=1",
            "logger=none",
            "checkpoint.save_best=false",
            *overrides,
        ]
    )
    results = train(cfg, tmp_path)
    assert results["sam"] == cfg.sam.name
    assert results["final_acc1"] >= 70.0, results  # chance is 10%
    # results.json's measured cost: 1 + inner_steps per ascent for the whole-batch variants
    ascents = 0.0 if cfg.sam.name == "msam" else results["ascent_fraction"]
    if cfg.sam.name in ("esam", "ksam"):  # a forward over the batch, the rest on part of it
        assert 1.0 < results["passes_per_step"] < 2.0, results
    elif cfg.sam.name == "saf":  # SGD's one pass: the stored outputs cost no computation
        assert results["passes_per_step"] == 1.0, results
    elif cfg.sam.name == "mesa":  # the EMA model's forward (1/3) from epoch 1 of 2
        assert results["passes_per_step"] == pytest.approx(1 + 1 / 6, abs=0.02), results
    else:
        expected = 1 + cfg.sam.inner_steps * ascents
        assert results["passes_per_step"] == pytest.approx(expected, abs=1e-3), results
    # weight gradients computed: every backward's, less the unperturbed tensors' in ESAM's first
    grads, backwards = (
        results["weight_grad_fraction_per_step"],
        results["backward_examples_per_step"],
    )
    if cfg.sam.name == "esam":  # a whole-batch pass, a forward over it, a pass on part of it
        full = backwards / (results["forward_examples_per_step"] - backwards)
    else:
        full = 1.0 if cfg.sam.name in ("saf", "mesa") else 1 + cfg.sam.inner_steps * ascents
    if cfg.sam.perturb_fraction < 1:
        assert full - 1 < grads < full, results
    elif cfg.sam.name != "ksam":  # (K-SAM's parts of the batch: tested in test_efficient_sam)
        assert grads == pytest.approx(full, abs=1e-3), results
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    if cfg.optimizer.momentum:
        assert state["optimizer"]["state"], "the base optimizer's momentum must be checkpointed"


# --------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    ("overrides", "cls", "attributes"),
    [
        (["sam=gsam", "scheduler.min_lr=0.001"], GSAM, {"alpha": 0.2, "lr_min": 0.001}),
        (["sam=looksam"], LookSAM, {"k": 5, "alpha": 0.7}),
        (["sam=interval", "sam.k=3"], IntervalSAM, {"k": 3}),
        (["sam=fsam"], FriendlySAM, {"sigma": 1.0, "ema_decay": 0.9}),
        (
            ["sam.p=inf", "sam.perturb_fraction=0.5", "sam.inner_steps=2"],
            SAM,
            {"p": float("inf"), "perturb_fraction": 0.5, "inner_steps": 2},
        ),
    ],
)
def test_build_optimizer_makes_the_configured_variant(overrides, cls, attributes):
    cfg = compose_config(overrides)
    validate(cfg)
    opt = build_optimizer(_tiny_model(), cfg.optimizer, cfg.sam, lr_min=cfg.scheduler.min_lr)
    assert type(opt) is cls
    for name, value in attributes.items():
        assert getattr(opt, name) == value, name


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sam.p=3"], "sam.p must be 2 or inf"),
        (["sam.perturb_fraction=0"], "sam.perturb_fraction must be in (0, 1]"),
        (["sam.inner_steps=0"], "sam.inner_steps must be > 0"),
        (["sam.k=3"], "sam.k applies to sam=looksam or sam=interval, not sam=sam"),
        (["sam=gsam", "sam.rho_min=0.5"], "sam.rho_min must be in [0, sam.rho=0.05]"),
        (["sam=looksam", "sam.k=0"], "sam.k must be > 0"),
        (["sam=fsam", "sam.ema_decay=1.0"], "sam.ema_decay must be in [0, 1)"),
        (["sam=fsam", "sam.inner_steps=2"], "sam=fsam takes one ascent step"),
        (["sam=fsam", "trainer.amp=fp16"], "use trainer.amp=bf16"),
        (["sam.include_weight_decay=true", "trainer.amp=fp16"], "use trainer.amp=bf16"),
    ],
)
def test_bad_sam_options_fail_with_one_line(overrides, message):
    assert message in config_refusal(overrides)


# --------------------------------------------------------------------------- DDP


@pytest.mark.slow
@pytest.mark.distributed
def test_replicas_stay_identical_when_a_variant_skips_or_combines_passes(tmp_path):
    """Steps without a second pass, and GSAM/LookSAM's combination of the gradient at w with
    the perturbed one, must use the all-reduced first gradient or the replicas drift apart.
    Under DDP too, trading the weights' storage with SAM's backup trains as copying does."""
    result = subprocess.run(
        torchrun_command([str(Path(__file__).with_name("variants_ddp_worker.py"))]),
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
        cwd=tmp_path,
    )
    report = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, report
    expected = [word for name in CASES for word in (name, "True")]
    assert result.stdout.split() == expected, report
