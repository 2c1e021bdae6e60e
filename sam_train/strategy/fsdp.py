"""FSDP2 (``torch.distributed.fsdp.fully_shard``): parameters, gradients, optimizer state and
SAM's weight backup sharded over the processes.

Each FSDP unit (a block, and the root for what is left) all-gathers its parameters before
its forward and backward and reduce-scatters its gradients after the backward, so every
rank holds 1/world_size of each parameter, of its gradient and of everything the optimizers
keep per parameter (momentum, SAM's copy of w, GSAM's first gradient, LookSAM's g_v).

What follows for SAM: the first pass's gradient is reduce-scattered like the second's (a
rank never holds a whole local gradient to perturb with), so eps comes from the global
gradient, the FSDP counterpart of ``sam.sync_perturbation=true``; per-replica eps and
``sam.m`` (m-sharpness) are refused by the config validator. Norms and inner products run
over every shard (:mod:`sam_train.sam.sharded`).

Norm-layer buffers are not sharded: each rank updates its own from its batch (the SAM step
freezes them in the second pass), and :meth:`average_buffers` reconciles them before every
evaluation and checkpoint, as under DDP. Checkpoints hold full state dicts gathered to every
rank (``torch.distributed.checkpoint.state_dict``, ``full_state_dict=True``, on the CPU), so
a checkpoint is the same file as a single-process or DDP run's and resumes under any number
of processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torch.optim import Optimizer

from sam_train.errors import ConfigError
from sam_train.strategy.ddp import DDPStrategy
from sam_train.strategy.process_group import DistInfo

if TYPE_CHECKING:  # the step imports the strategies
    from sam_train.step.precision import Precision

#: Class-name endings of the modules that become FSDP units by default: timm's ViT/DeiT/Swin/
#: ConvNeXt blocks (``Block``, ``ConvNeXtBlock``, ...), ResNet and WRN blocks (``BasicBlock``,
#: ``Bottleneck``), PyramidNet's ``PyramidBottleneck``. A model with none is one unit.
AUTO_WRAP_SUFFIXES = ("Block", "Bottleneck")

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


class FSDPStrategy(DDPStrategy):
    """``fully_shard`` on every unit of the wrapping policy, then on the root.

    The object-level collectives (``any_process``, ``broadcast_object``, buffer averaging)
    are DDP's; what differs is how the model is held, how its gradients are reduced, and how
    its state dicts are made.

    Args:
        wrap_classes: class names of the modules that become FSDP units; None: the blocks
            (:data:`AUTO_WRAP_SUFFIXES`); an empty list: the root only.
    """

    def __init__(
        self,
        info: DistInfo | None = None,
        device: torch.device | None = None,
        *,
        wrap_classes: list[str] | None = None,
    ) -> None:
        super().__init__(info, device)
        self.wrap_classes = None if wrap_classes is None else list(wrap_classes)
        self.units: list[str] = []  # the module names sharded as units (for the log)

    # --------------------------------------------------------------- the model
    def units_of(self, model: nn.Module) -> list[tuple[str, nn.Module]]:
        """The (name, module) pairs the policy makes FSDP units, the root excluded."""
        if self.wrap_classes is None:
            chosen = [
                (n, m)
                for n, m in model.named_modules()
                if n and type(m).__name__.endswith(AUTO_WRAP_SUFFIXES)
            ]
            # a block nested in a chosen block stays part of it
            return [(n, m) for n, m in chosen if not any(n.startswith(c + ".") for c, _ in chosen)]
        present = {type(m).__name__ for m in model.modules()}
        missing = sorted(set(self.wrap_classes) - present)
        if missing:
            raise ConfigError(
                f"trainer.fsdp_wrap names {', '.join(missing)}, which {type(model).__name__} "
                f"does not contain; its module classes: {', '.join(sorted(present))}"
            )
        return [
            (n, m) for n, m in model.named_modules() if n and type(m).__name__ in self.wrap_classes
        ]

    def shard(self, model: nn.Module, precision: Precision | None = None) -> nn.Module:
        """Shard ``model`` in place (its parameters become DTensors); build optimizers after.

        ``precision``'s dtype (bf16) becomes FSDP's ``MixedPrecisionPolicy`` compute dtype;
        gradients are reduced in float32."""
        if isinstance(model, FSDPModule):
            return model
        mesh = init_device_mesh(self.device.type, (self.world_size,))
        options: dict[str, Any] = {"mesh": mesh}
        if precision is not None and precision.dtype is not None:
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=precision.dtype, reduce_dtype=torch.float32
            )
        units = self.units_of(model)
        for _, module in units:
            fully_shard(module, **options)
        fully_shard(model, **options)
        self.units = [name for name, _ in units]
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The sharded module runs as it is (``shard`` has done the work)."""
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        return getattr(model, "_orig_mod", model)  # through torch.compile, to the FSDP module

    def no_sync(self, model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
        """Accumulation's micro-batches keep unsharded gradients until the last one."""
        fsdp = self.unwrap(model)
        if not skip_sync or not isinstance(fsdp, FSDPModule):
            return contextlib.nullcontext()
        return _gradient_sync_off(fsdp)

    @torch.no_grad()
    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Nothing to do: FSDP's reduce-scatter has averaged every gradient already."""

    # --------------------------------------------------------------- evaluation
    def eval_batches(
        self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """The loader's batches, then stand-ins (flagged False: not scored) until every rank
        has run as many forwards: each forward all-gathers parameters, and the test shards
        (no padding) can differ by a batch. One object all-gather agrees on the count."""
        batches = len(loader)  # type: ignore[arg-type]
        counts = self.gather_object(batches)
        last = None
        for images, targets in loader:
            last = (images, targets)
            yield images, targets, True
        if min(counts) == 0:  # a rank without a batch runs zeros of another rank's shape
            shapes = self.gather_object(None if last is None else tuple(last[0].shape[1:]))
            shape = next(s for s in shapes if s is not None)
            last = last or (torch.zeros((1, *shape)), torch.zeros(1, dtype=torch.long))
        for _ in range(max(counts) - batches):
            yield last[0], last[1], False

    # --------------------------------------------------------------- state dicts
    # Collectives: every rank calls them. The files are a single-process run's: the model's
    # plain state dict, the optimizer's with parameters numbered in group order.
    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict, on the CPU, on rank 0 (the others get an empty dict)."""
        return get_model_state_dict(self.unwrap(model), options=_FULL)

    def load_model_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        set_model_state_dict(self.unwrap(model), state, options=_FULL)

    def optimizer_state_dict(self, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        """The base optimizer's full state plus SAM's own (``"sam"``), gathered."""
        base = getattr(optimizer, "base_optimizer", optimizer)
        state = get_optimizer_state_dict(self.unwrap(model), base, options=_FULL)
        extra = optimizer._extra_state() if base is not optimizer else {}  # gathers too
        if not state:  # only rank 0 receives the gathered state (cpu_offload)
            return {}
        index = {name: i for i, name in enumerate(_names_in_group_order(self.unwrap(model), base))}
        state = {
            "state": {index[name]: value for name, value in state["state"].items()},
            "param_groups": [
                {**g, "params": [index[name] for name in g["params"]]}
                for g in state["param_groups"]
            ],
        }
        return {**state, "sam": extra} if extra else state

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: Optimizer, state: dict[str, Any]
    ) -> None:
        base = getattr(optimizer, "base_optimizer", optimizer)
        names = _names_in_group_order(self.unwrap(model), base)
        if len(state["param_groups"]) != len(base.param_groups):
            raise ValueError("the saved optimizer has another number of parameter groups")
        by_name = {
            "state": {names[int(i)]: value for i, value in state["state"].items()},
            "param_groups": [
                {**g, "params": [names[int(i)] for i in g["params"]]} for g in state["param_groups"]
            ],
        }
        set_optimizer_state_dict(self.unwrap(model), base, by_name, options=_FULL)
        if base is not optimizer:  # loading replaced the base's group list: share it again
            optimizer.param_groups, optimizer.state = base.param_groups, base.state
            if state.get("sam"):
                optimizer._load_extra_state(state["sam"])


def _names_in_group_order(model: nn.Module, optimizer: Optimizer) -> list[str]:
    """The parameters' names in the order the optimizer's groups list them."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


@contextlib.contextmanager
def _gradient_sync_off(model: FSDPModule) -> Iterator[None]:
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
