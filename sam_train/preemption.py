"""Graceful stop on SIGTERM / SIGUSR1, the signals schedulers send before preemption.

The handler only sets a flag; the training loop finishes the current step, writes a
checkpoint and exits with ``cli.EXIT_PREEMPTED`` (75) so the job can be requeued with
``resume=auto``.
"""

from __future__ import annotations

import signal
from types import FrameType

import torch

from sam_train.distributed import all_reduce_sum

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class PreemptionFlag:
    """Records a stop signal; ``should_stop`` makes every rank agree on the same step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def install(self) -> PreemptionFlag:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal = signum

    def should_stop(self, distributed: bool, device: torch.device) -> bool:
        """True on every rank once any rank got a signal.

        Distributed, this is a one-element all-reduce: call it at the same steps on all ranks.
        """
        if not distributed:
            return self.signal is not None
        flag = torch.tensor([0.0 if self.signal is None else 1.0], device=device)
        return bool(all_reduce_sum(flag).item() > 0)
