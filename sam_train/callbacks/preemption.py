"""Stop requests from signals: SIGTERM/SIGUSR1 (schedulers' preemption notice) and Ctrl-C.

The handler only records the signal; the run finishes the current step, checkpoints
(:class:`~sam_train.callbacks.checkpointing.Checkpointing` on ``on_stop``) and stops with
exit code 75 (preempted: continue with ``resume=auto``) or 130 (Ctrl-C). A second Ctrl-C
raises KeyboardInterrupt at once. Under DDP the processes agree on the step at which they
stop with a one-element all-reduce every ``check_every`` steps, so a signal to any one of
them stops all within that many steps, whatever the logging interval.
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import TYPE_CHECKING

from sam_train.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.step import StepOutput
    from sam_train.trainer import Trainer

STOP_SIGNALS = {
    signal.SIGTERM: EXIT_PREEMPTED,
    signal.SIGUSR1: EXIT_PREEMPTED,
    signal.SIGINT: EXIT_INTERRUPTED,
}
DDP_CHECK_EVERY = 4  # steps between the all-reduces that agree on a stop


class Preemption(Callback):
    def __init__(self, check_every: int | None = None) -> None:
        self.check_every = check_every
        self.received: signal.Signals | None = None
        self._previous: dict[int, object] = {}

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        if self.check_every is None:
            self.check_every = DDP_CHECK_EVERY if trainer.run.strategy.distributed else 1
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # the second Ctrl-C: stop now, without a checkpoint
        self.received = signal.Signals(signum)

    def on_train_step_end(self, trainer: Trainer, state: RunState, output: StepOutput) -> None:
        if state.global_step % (self.check_every or 1):
            return
        if not trainer.run.strategy.any_process(self.received is not None):
            return
        if self.received is None:  # another process got the signal
            trainer.request_stop("stopped: another process received a stop signal", EXIT_PREEMPTED)
        else:
            name = self.received.name
            trainer.request_stop(f"stopped by {name}", STOP_SIGNALS[self.received])
