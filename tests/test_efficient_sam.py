"""The efficient SAM variants (issue 22): update rules against NumPy computations written from
the papers' equations, resume, pass counts, and the refusals.

The problems are quadratics L(w) = 1/2 w^T A w (gradient A w), as in test_sam_variants.py.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import compose_config
from sam_reference import CPU
from torch import nn

from sam_train.config import ConfigError, validate
from sam_train.sam import VARIANTS, MomentumSAM
from sam_train.step import SAMStep

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
        opt.step(closure)
    return w.detach().numpy(), calls[0], opt


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


# --------------------------------------------------------------------------- the step
def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


def _data(steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
        for _ in range(steps)
    ]


#: variant name -> (its keyword arguments, on a momentum-SGD base with rho 0.1)
STEP_CASES = {"msam": {}}


def _step(name: str, model: nn.Module) -> SAMStep:
    opt = VARIANTS[name](
        model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1, momentum=0.9, **STEP_CASES[name]
    )
    return SAMStep(model, opt, nn.CrossEntropyLoss(), CPU)


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
        (["sam=msam", "trainer.strategy=fsdp"], "use trainer.strategy=ddp"),
    ],
)
def test_efficient_variants_refuse_what_they_cannot_do_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
