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


class RunningStatsGuard:
    """Snapshot the model's buffers and put them back after a pass that must not update them."""

    def __init__(self, model: nn.Module) -> None:
        self._buffers = [b for b in model.buffers() if b is not None]
        self._saved = [torch.empty_like(b) for b in self._buffers]

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
        """Put the snapshot back where the 0-d bool ``flag`` is set, on the device (no read)."""
        flags = {flag.device: flag}  # moved once per device, not once per buffer
        for buffer, saved in zip(self._buffers, self._saved, strict=True):
            here = flags.get(buffer.device)
            if here is None:
                here = flags[buffer.device] = flag.to(buffer.device)
            torch.where(here, saved, buffer, out=buffer)

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """Run the body without changing any buffer of the model."""
        self.save()
        try:
            yield
        finally:
            self.restore()
