"""DistributedDataParallel: every process holds the whole model and averages gradients."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from sam_train.errors import SamTrainError
from sam_train.strategy.base import Strategy
from sam_train.strategy.process_group import DistInfo

T = TypeVar("T")


class DDPStrategy(Strategy):
    """``torch.nn.parallel.DistributedDataParallel`` without per-forward buffer broadcasts.

    By default DDP broadcasts rank 0's buffers at the start of every forward that follows a
    synchronised backward: in the SAM step that is the first pass (per-replica perturbation)
    or both passes (``sync_perturbation``), and the first evaluation batch. It would add a
    collective to the step and one inside evaluation, whose shards may hold different numbers
    of batches. Instead each replica keeps its own statistics and :meth:`average_buffers`
    reconciles them before every evaluation and checkpoint, so a step communicates the
    gradient buckets and nothing else.

    ``bucket_cap_mb`` sets DDP's gradient bucket size (None: DDP's default, about 1 MiB for the
    first bucket, then 25 MiB); ``scripts/bench`` uses it to count buckets on tiny models.
    """

    freezes_parameters = False  # the reducer expects every gradient (Strategy)

    def __init__(
        self,
        info: DistInfo | None = None,
        device: torch.device | None = None,
        *,
        bucket_cap_mb: float | None = None,
    ) -> None:
        super().__init__(info, device)
        self.bucket_cap_mb = bucket_cap_mb

    def wrap(self, model: nn.Module) -> nn.Module:
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.15 renamed broadcast_buffers; the new flag still syncs buffers once, at init.
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
            options: dict[str, Any] = {"forward_sync_buffers": False}
        else:
            options = {"broadcast_buffers": False}
        if self.bucket_cap_mb is not None:
            options["bucket_cap_mb"] = self.bucket_cap_mb
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return ddp(model, device_ids=device_ids, **options)

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

    def no_sync(self, model: nn.Module, skip_sync: bool) -> contextlib.AbstractContextManager:
        if skip_sync and isinstance(model, nn.parallel.DistributedDataParallel):
            return model.no_sync()
        return contextlib.nullcontext()

    @torch.no_grad()
    def average_gradients(self, params: list[torch.Tensor]) -> None:
        _average_in_place([p.grad for p in params if p.grad is not None])

    @torch.no_grad()
    def average_buffers(self, module: nn.Module) -> None:
        """timm's ``--dist-bn reduce``. The sum runs in float64, so buffers that are equal on
        all ranks (SyncBatchNorm statistics, constants) come back bit-identical."""
        buffers = [b for b in self.unwrap(module).buffers() if b.is_floating_point()]
        _average_in_place(buffers, torch.float64)

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def any_process(self, flag: bool) -> bool:
        votes = torch.tensor([float(flag)], device=self.device)
        return bool(self.all_reduce_sum(votes).item() > 0)

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def gather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def barrier(self) -> None:
        dist.barrier()

    def main_decides(self, decide: Callable[[], T]) -> T:
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", decide())
            except SamTrainError as err:
                outcome = ("error", (type(err), str(err)))
                self.broadcast_object(outcome)
                raise
        outcome = self.broadcast_object(outcome)
        if outcome[0] == "error":
            error_type, message = outcome[1]
            raise error_type(message)
        return outcome[1]


def _average_in_place(tensors: list[torch.Tensor], dtype: torch.dtype | None = None) -> None:
    """Mean over ranks of every tensor, in one all-reduce of their concatenation (in ``dtype``)."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1).to(dtype or t.dtype) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    for t, mean in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(mean.view_as(t))
