"""Counting what a step does, on the CPU: host reads, the ops it dispatches and the bytes it
allocates.

On a GPU these cost time (a read stalls the host until the queue drains) and memory; on the
CPU they can be counted exactly under a ``TorchDispatchMode``, which sees every aten op.
The tests guard with them and ``scripts/bench`` reports them; neither times anything.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

#: The ops that copy a tensor's value to the host (``.item()``, ``bool(t)``, ``float(t)``,
#: ``if t:`` and ``tensor.tolist()`` of a device tensor all dispatch the first).
HOST_READ_OPS = (torch.ops.aten._local_scalar_dense.default,)


class HostReads(TorchDispatchMode):
    """Records each op that reads a tensor's value back to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in HOST_READ_OPS:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


class DispatchedOps(TorchDispatchMode):
    """Counts the ops dispatched inside the mode, by name. On a small model each op costs
    microseconds of dispatch whatever its size, so their number is the step's overhead,
    counted rather than timed."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())


def dispatched_ops(call: Callable[[], Any]) -> Counter[str]:
    """The ops one ``call()`` dispatches, by name."""
    with DispatchedOps() as mode:
        call()
    return mode.ops


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    return []


class Allocations(TorchDispatchMode):
    """Live and peak bytes of the tensors created inside the mode (new storage only: views
    and in-place results are not allocations). A tensor counts until it is freed; a view
    that outlives the tensor it was made from is not followed."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.allocated = 0  # every new tensor's bytes, freed or not
        self.largest = 0  # the largest single new tensor's bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in _tensors([*args, *kwargs.values()])}
        out = func(*args, **kwargs)
        for tensor in _tensors(out):
            storage = tensor.untyped_storage()
            if storage.data_ptr() in inputs or storage.nbytes() == 0:
                continue
            inputs.add(storage.data_ptr())
            self._count(tensor, storage.nbytes())
        return out

    def _count(self, tensor: torch.Tensor, nbytes: int) -> None:
        self.live += nbytes
        self.allocated += nbytes
        self.largest = max(self.largest, nbytes)
        self.peak = max(self.peak, self.live)
        weakref.finalize(tensor, self._free, nbytes)

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes


def tensor_bytes(tensors: list[torch.Tensor]) -> int:
    """The bytes of ``tensors`` (for parameter-sized comparisons)."""
    return sum(t.numel() * t.element_size() for t in tensors)
