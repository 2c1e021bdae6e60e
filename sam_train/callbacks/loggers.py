"""What every logger (``configs/logger/``) hears, in one place: the scalars of a log step, of
an epoch and of the finished run, named as the design notes name them (``train/loss``,
``test/acc1``, ``test_ema/acc1``, ``lr``). A logger is a :class:`MetricLogger` that says how
to open, write, finish and close; it runs on rank 0 only.

The trainer's callbacks put the loggers before checkpointing, and :meth:`MetricLogger.log`
flushes every write: whatever a checkpoint covers is on disk before the checkpoint, so a
SIGKILL loses no row a resume would not write again (W&B's service writes its file in its own
time: its logger waits for it in ``on_checkpoint``). A resumed run drops or ignores only what
came after its checkpoint (TensorBoard's ``purge_step``, the CSV files' truncation, the
steps MLflow and W&B already hold). A name is written once per step (``best/acc1`` is in the
last epoch's scalars and in the final ones).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.ema import EMA_METRICS  # state.test_metrics["ema_<name>"] with EMA
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

# Window metrics the trainer reports that are bookkeeping, not scalars to plot.
NOT_SCALARS = ("epoch", "step", "eta_seconds")


def _ema_scalars(test: dict[str, float], prefix: str) -> dict[str, float]:
    """The EMA model's test metrics (there with ``ema.decay``) as ``prefix/name``."""
    present = [name for name in EMA_METRICS if f"ema_{name}" in test]
    return {f"{prefix}/{name}": test[f"ema_{name}"] for name in present}


def step_scalars(metrics: dict[str, float], state: RunState) -> dict[str, float]:
    """A log step's scalars: the trainer's window metrics without its bookkeeping."""
    scalars = {k: v for k, v in metrics.items() if k not in NOT_SCALARS}
    scalars["train/skipped_steps"] = state.skipped_steps
    return scalars


# An epoch's scalars: (name, where the value is, its key there).
EPOCH_SCALARS = (
    ("train/acc1", "train", "acc1"),
    ("train/epoch_loss", "train", "loss"),
    ("test/loss", "test", "loss"),
    ("test/acc1", "test", "acc1"),
    ("test/acc5", "test", "acc5"),
    ("best/acc1", "best", "acc1"),
)
# The finished run's scalars are its last epoch's, named for a table of runs: {final: epoch}.
FINAL_NAMES = {
    "final/acc1": "test/acc1",
    "best/acc1": "best/acc1",
    "final/acc5": "test/acc5",
    "final/loss": "test/loss",
    "final/train_loss": "train/epoch_loss",
}


def _last_epoch(state: RunState) -> dict[str, float]:
    """``EPOCH_SCALARS`` read from the state (without the EMA model's)."""
    sources = {"train": state.train_metrics, "test": state.test_metrics, "best": state.best}
    return {name: sources[where][key] for name, where, key in EPOCH_SCALARS}


def epoch_scalars(state: RunState) -> dict[str, float]:
    """An epoch's scalars: its training summary, its evaluation (and the EMA model's), the
    best test top-1 so far."""
    return {**_last_epoch(state), **_ema_scalars(state.test_metrics, "test_ema")}


def final_scalars(state: RunState) -> dict[str, float]:
    """The finished run's metrics, the values a table of runs (TensorBoard's HParams tab,
    W&B's summary, MLflow's run list) shows beside the hyper-parameters."""
    epoch = _last_epoch(state)
    final = {name: epoch[epoch_name] for name, epoch_name in FINAL_NAMES.items()}
    return {**final, **_ema_scalars(state.test_metrics, "final_ema")}


def plain(value: Any) -> int | float | str | bool:
    """A hyper-parameter value as loggers take it: lists and None as their YAML-ish text."""
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


class MetricLogger(Callback):
    """Rank 0 writes; ``hparams`` is the curated set (overridden keys first), ``config`` the
    whole flattened config, for loggers that keep both. A logger's constructor takes
    ``(self, *args, <its options, keyword-only>, **kwargs)`` and passes these three on."""

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.hparams = dict(hparams or {})
        self.config = dict(config or {})
        self.active = False
        self._written: tuple[int, set[str]] = (-1, set())  # the step and its names written

    def log(self, scalars: dict[str, float], step: int) -> None:
        """Write the scalars not yet written at ``step``, then flush: nothing is buffered
        that a SIGKILL after the next checkpoint would lose."""
        if self._written[0] != step:
            self._written = (step, set())
        names = self._written[1]
        fresh = {name: value for name, value in scalars.items() if name not in names}
        if fresh:
            names.update(fresh)
            self.write(fresh, step)
            self.flush()

    # What a logger implements.
    def open(self, trainer: Trainer, state: RunState) -> None:
        raise NotImplementedError

    def write(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """After each write: put what was written on disk (or in the logger's own process)."""

    def finish(self, scalars: dict[str, float], step: int) -> None:
        """The run is complete: ``scalars`` are its final and best metrics."""
        self.log(scalars, step)

    def close(self) -> None:
        """Always, on every exit path."""

    # The events.
    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self.active = trainer.run.strategy.is_main
        if self.active:
            self.open(trainer, state)

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        if self.active:
            self.log(step_scalars(metrics, state), state.global_step)

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        if self.active:
            self.log(epoch_scalars(state), state.global_step)

    def on_fit_end(self, trainer: Trainer, state: RunState) -> None:
        if self.active:
            self.finish(final_scalars(state), state.global_step)

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        if self.active:
            self.close()
        self.active = False
