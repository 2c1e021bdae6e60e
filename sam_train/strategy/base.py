"""The strategy interface, and the single-process strategy where every collective is a no-op."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn
from torch.optim import Optimizer

from sam_train.strategy.process_group import DistInfo

if TYPE_CHECKING:  # the step imports the strategies
    from sam_train.step.precision import Precision

T = TypeVar("T")


def _from_info(field: str) -> Any:
    """A read-only attribute of the strategy that is its ``DistInfo``'s ``field``: one source for
    who this process is."""
    return property(lambda self: getattr(self.info, field))


class Strategy:
    """One process alone: nothing to wrap, nothing to reduce.

    Subclasses (DDP, FSDP) override what their processes must communicate; every
    method keeps the same meaning, so the code calling it never asks how the model is held.
    """

    def __init__(self, info: DistInfo | None = None, device: torch.device | None = None) -> None:
        self.info = info or DistInfo()
        self.device = device or torch.device("cpu")

    # --------------------------------------------------------------- who am I
    rank: int = _from_info("rank")
    world_size: int = _from_info("world_size")
    is_main: bool = _from_info("is_main")
    distributed: bool = _from_info("enabled")
    #: May a pass run with some parameters not requiring gradients (ESAM's skipped weight
    #: gradients, ``SAM.choose_perturbed``)? Not under DDP and FSDP, where the reducer and the
    #: sharded parameters expect every gradient: they compute those and drop them.
    freezes_parameters: bool = True

    # --------------------------------------------------------------- the model
    def shard(self, model: nn.Module, precision: Precision | None = None) -> nn.Module:
        """Split the parameters over processes before optimizers are built (FSDP), computing
        in ``precision``'s dtype; else as is."""
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the step runs forward and backward through."""
        return model

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The plain module (for evaluation shards, which need no collective, and state dicts)."""
        return model

    def no_sync(self, model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
        """A backward pass whose gradients stay local to this process when ``skip_sync``."""
        return contextlib.nullcontext()

    def eval_batches(
        self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
        """The evaluation batches, each flagged True when it is to be scored (FSDP adds
        unscored ones so that every rank runs as many forwards)."""
        for images, targets in loader:
            yield images, targets, True

    # --------------------------------------------------------------- state dicts
    # Every rank calls these (FSDP gathers); a checkpoint has the same layout under any
    # strategy, so it resumes under any other and any number of processes.
    def model_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return self.unwrap(model).state_dict()

    def load_model_state_dict(self, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
        self.unwrap(model).load_state_dict(state)

    def optimizer_state_dict(self, model: nn.Module, optimizer: Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_optimizer_state_dict(
        self, model: nn.Module, optimizer: Optimizer, state: dict[str, Any]
    ) -> None:
        optimizer.load_state_dict(state)

    # --------------------------------------------------------------- collectives
    def average_gradients(self, params: list[torch.Tensor]) -> None:
        """Mean of ``.grad`` over processes, outside a backward pass."""

    def average_buffers(self, module: nn.Module) -> None:
        """Mean of the floating-point buffers (norm-layer statistics) over processes."""

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over processes, in place."""
        return tensor

    def any_process(self, flag: bool) -> bool:
        """True on every process when it is true on any (a stop request, a failure)."""
        return flag

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return obj

    def gather_object(self, obj: Any) -> list[Any]:
        """Every process's ``obj`` in rank order."""
        return [obj]

    def barrier(self) -> None:
        """Wait for every process."""

    def main_decides(self, decide: Callable[[], T]) -> T:
        """Run ``decide`` on rank 0 only; every process returns its value or raises its user
        error (a SamTrainError), so no process is left waiting in a collective when rank 0
        refuses the run."""
        return decide()


class SingleProcess(Strategy):
    """The strategy of a run that torchrun did not start."""
