"""SAM moves the weights by trading storage with its backup (``SAM.swap_weights``): the model
runs at w + eps without a copy of w, and ``restore`` trades back without one. The update must
be the copy path's, bit for bit, for every variant and step option, and ``restore`` must leave
exactly the pre-step weights in the parameters' own storage."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from sam_reference import batches, bn_mlp, mlp, sam_step
from torch import nn
from torch.nn import functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from variants_ddp_worker import CASES as DDP_CASES

from sam_train.sam import SAM, VARIANTS


class _Ops(TorchDispatchMode):
    """The aten ops run inside the mode, by name (``copy_``, ``detach``, ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    F.cross_entropy(model(x), y).backward()


def test_the_perturbed_pass_runs_on_the_backup_storage_and_restore_trades_back_without_a_copy():
    x, y = batches(1)[0]
    model, twin = mlp(), mlp()
    params, twin_params = list(model.parameters()), list(twin.parameters())
    sam = SAM(params, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    copying = SAM(twin_params, torch.optim.SGD, rho=0.5, lr=0.1, momentum=0.9)
    copying.swap_weights = False
    for _ in range(2):  # the second step reuses the backup buffers of the first
        before = [p.detach().clone() for p in params]
        storage = [p.data_ptr() for p in params]
        _loss(model, x, y), _loss(twin, x, y)
        with _Ops() as ascent:
            assert sam.first_step(zero_grad=True)
        copying.first_step(zero_grad=True)
        assert not {"copy_", "_foreach_copy_"} & set(ascent.ops)  # w is never copied out
        assert all(p.data_ptr() != s for p, s in zip(params, storage, strict=True))
        assert all(map(torch.equal, params, twin_params))  # w + eps, bit for bit
        _loss(model, x, y), _loss(twin, x, y)
        assert all(map(torch.equal, [p.grad for p in params], [p.grad for p in twin_params]))
        with _Ops() as restore:
            sam.restore()
        copying.restore()
        assert set(restore.ops) == {"detach"}  # ``.data``'s views: no byte is copied back
        assert [p.data_ptr() for p in params] == storage  # w in its own storage again
        assert all(map(torch.equal, params, before))  # exactly the weights before the step
        sam.base_optimizer.step(), copying.base_optimizer.step()
        sam.zero_grad(), copying.zero_grad()
        assert all(map(torch.equal, params, twin_params))
    # the same Parameter objects throughout: the model's, the optimizer's, its state's keys
    assert all(map(operator.is_, params, model.parameters()))
    assert all(map(operator.is_, params, sam.param_groups[0]["params"]))
    assert set(map(id, sam.state)) == set(map(id, params))


#: every variant: the DDP test's, with its arguments, and the rest
VARIANT_ARGUMENTS = {
    **DDP_CASES,
    "fsam": {},
    "saf": {"num_examples": 64, "steps_per_epoch": 1, "start_epoch": 1, "past_epochs": 1},
    "bsam": {**DDP_CASES["bsam"], "momentum": 0.0},  # bSAM's SGD has no momentum
}
#: SAM's options and the step's, each on SAM
OPTION_CASES = {
    "asam": ({"adaptive": True}, {}),
    "p=inf": ({"p": float("inf")}, {}),
    "weight decay in the ascent": ({"include_weight_decay": True, "weight_decay": 5e-4}, {}),
    "stochastic weight perturbation": ({"perturb_fraction": 0.5, "seed": 3}, {}),
    "two ascent steps (the copy path)": ({"inner_steps": 2}, {}),
    "m-sharpness": ({}, {"sam_chunk": 4}),
    "accumulation": ({}, {"accum_steps": 2}),
    "clipping": ({}, {"clip_grad_norm": 0.1}),
    "bf16": ({}, {"precision": "bf16"}),
}
SWAP_CASES = {
    **{name: (name, arguments, {}) for name, arguments in VARIANT_ARGUMENTS.items()},
    **{name: ("sam", arguments, step) for name, (arguments, step) in OPTION_CASES.items()},
}


def _trained(variant: str, arguments: dict, step_options: dict, swap: bool):
    model = bn_mlp()
    step = sam_step(model, VARIANTS[variant], arguments, **step_options)
    step.optimizer.swap_weights = swap
    model.train()
    for index, (x, y) in enumerate(batches(4)):
        step(x, y, torch.arange(len(y)) + index * len(y))
    state = [t for s in step.base_optimizer.state.values() for t in s.values()]
    tensors = [*model.parameters(), *model.buffers(), *state]
    return [t.detach().clone() for t in tensors if isinstance(t, torch.Tensor)]


@pytest.mark.parametrize(
    ("variant", "arguments", "step_options"), SWAP_CASES.values(), ids=SWAP_CASES
)
def test_swapping_trains_bit_identically_to_copying(variant, arguments, step_options):
    """Weights, running statistics and optimizer state after four steps, swap against copy."""
    assert set(VARIANT_ARGUMENTS) == set(VARIANTS)  # every variant is among the cases
    swapped = _trained(variant, arguments, step_options, swap=True)
    copied = _trained(variant, arguments, step_options, swap=False)
    assert len(swapped) == len(copied) > len(list(bn_mlp().parameters()))
    assert all(map(torch.equal, swapped, copied))
    untrained = [t.detach() for t in bn_mlp().parameters()]
    assert not all(map(torch.equal, swapped, untrained))  # the steps did move the weights


def test_a_swapped_step_keeps_the_gradient_when_asked():
    """``first_step(zero_grad=False)``: the caller's gradient is still there, and restore still
    brings back the storage the weights started in."""
    x, y = batches(1)[0]
    model = mlp()
    params = list(model.parameters())
    sam = SAM(params, torch.optim.SGD, rho=0.5, lr=0.1)
    _loss(model, x, y)
    grads = [p.grad.clone() for p in params]
    storage = [p.data_ptr() for p in params]
    sam.first_step(zero_grad=False)
    assert all(map(torch.equal, [p.grad for p in params], grads))
    sam.restore()
    assert [p.data_ptr() for p in params] == storage


def test_a_deep_copy_between_steps_copies_the_weights_not_the_perturbation():
    """Between steps the backup buffers hold the last w + eps; the model holds w (EMA copies
    and checkpoints read the parameters)."""
    model = bn_mlp()
    step = sam_step(model)
    model.train()
    for x, y in batches(2):
        step(x, y)
    kept = copy.deepcopy(model)
    backup = step.optimizer._backup.values()
    for p, q, b in zip(model.parameters(), kept.parameters(), backup, strict=True):
        assert torch.equal(p, q) and not torch.equal(p, b)
    assert step.optimizer._perturbed == [] and not step.optimizer._swapped
