"""What the SAM optimizers need to run on FSDP2's sharded parameters (DTensors).

Under ``fully_shard`` every parameter, gradient and buffer SAM keeps (the weight backup, GSAM's
first gradient, LookSAM's g_v, F-SAM's EMA) is a DTensor holding this rank's shard. Most
multi-tensor ops dispatch on DTensors, so the update code is the same as on plain tensors;
three things differ and live here: a reduction must return the global value (a norm or an
inner product over every shard), ``_foreach_copy_`` has no DTensor rule (the local shards
are copied), and a random mask or a checkpointed buffer must be made per shard. On plain
tensors every function here is the plain operation.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch.distributed.tensor import DTensor, distribute_tensor


def is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor)


def replicated_value(tensor: torch.Tensor) -> torch.Tensor:
    """A reduction's result as a plain tensor: the global value (one all-reduce when it is
    still a partial sum, none when DTensor already reduced it)."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard (the tensor itself when plain); writes to it change ``tensor``."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def copy_all(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """``torch._foreach_copy_`` that also takes DTensors (copied shard by shard); plain lists
    go straight through (a Python call per tensor is a measurable share of a large model's
    bookkeeping on the CPU)."""
    if not targets:
        return
    if any(isinstance(t, DTensor) for t in targets) or any(isinstance(s, DTensor) for s in sources):
        targets, sources = [local(t) for t in targets], [local(s) for s in sources]
    torch._foreach_copy_(targets, sources)


def drop_grads(params: Iterable[torch.Tensor]) -> None:
    """``zero_grad(set_to_none=True)`` over ``params`` without the optimizer's profiler scope
    and group walk (twice a step in SAM's bookkeeping)."""
    for p in params:
        p.grad = None


def shaped_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values`` (of ``like``'s local shape) as a tensor of ``like``'s layout."""
    if not isinstance(like, DTensor):
        return values
    return DTensor.from_local(
        values, like.device_mesh, like.placements, shape=like.shape, stride=like.stride()
    )


def local_shape(tensor: torch.Tensor) -> torch.Size:
    return local(tensor).shape


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (an all-gather for a shard), for a checkpoint."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor.clone()


def laid_out_like(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a checkpoint, placed (and sharded) like the parameter ``like``."""
    values = values.to(device=like.device, dtype=like.dtype)
    if not isinstance(like, DTensor):
        return values
    return distribute_tensor(values, like.device_mesh, like.placements, src_data_rank=None)
