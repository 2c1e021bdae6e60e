"""Keep norm-layer running statistics to the first SAM pass.

The second forward pass runs at the perturbed weights w + eps; its batch statistics must not
leak into the running estimates used at evaluation. Zeroing BatchNorm momentum only covers
``_BatchNorm`` subclasses; snapshotting every buffer covers any module that tracks running
statistics (SyncBatchNorm, timm's norm layers, custom ones), at the cost of copying buffers,
which are tiny next to the weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def _flat_views(
    tensors: list[torch.Tensor],
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """One flat tensor per (device, dtype) of ``tensors``, and a view of it shaped like each.

    A model has a few buffers per norm layer (three for BatchNorm, of two dtypes): an
    operation on the flat tensors costs one kernel per dtype instead of one per buffer."""
    groups: dict[tuple[torch.device, torch.dtype], int] = {}
    for t in tensors:
        groups[t.device, t.dtype] = groups.get((t.device, t.dtype), 0) + t.numel()
    flats = {key: torch.empty(size, dtype=key[1], device=key[0]) for key, size in groups.items()}
    offsets = dict.fromkeys(flats, 0)
    views = []
    for t in tensors:
        key, start = (t.device, t.dtype), offsets[t.device, t.dtype]
        views.append(flats[key][start : start + t.numel()].view(t.shape))
        offsets[key] = start + t.numel()
    return list(flats.values()), views


class RunningStatsGuard:
    """Snapshot the model's buffers and put them back after a pass that must not update them."""

    def __init__(self, model: nn.Module) -> None:
        self._buffers = [b for b in model.buffers() if b is not None]
        self._flat_saved, self._saved = _flat_views(self._buffers)
        self._scratch: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None

    @torch.no_grad()
    def save(self) -> None:
        if self._buffers:  # one multi-tensor copy, not a kernel per buffer
            torch._foreach_copy_(self._saved, self._buffers)

    @torch.no_grad()
    def restore(self) -> None:
        if self._buffers:
            torch._foreach_copy_(self._buffers, self._saved)

    @torch.no_grad()
    def restore_where(self, flag: torch.Tensor) -> None:
        """Put the snapshot back where the 0-d bool ``flag`` is set, on the device (no read).

        The buffers are gathered into flat tensors, selected there, and copied back: four
        kernels for BatchNorm's buffers however many layers there are, not one per buffer."""
        if not self._buffers:
            return
        if self._scratch is None:  # allocated on first use: only the step's guard needs it
            self._scratch = _flat_views(self._buffers)
        flat_current, current = self._scratch
        torch._foreach_copy_(current, self._buffers)
        for saved, now in zip(self._flat_saved, flat_current, strict=True):
            here = flag if flag.device == now.device else flag.to(now.device)
            torch.where(here, saved, now, out=now)
        torch._foreach_copy_(self._buffers, current)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Run the body without changing any buffer of the model."""
        self.save()
        try:
            yield
        finally:
            self.restore()
