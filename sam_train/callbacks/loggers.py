"""What every logger (``configs/logger/``) hears, in one place: the scalars of a log step, of
an epoch and of the finished run, named as the design notes name them (``train/loss``,
``test/acc1``, ``test_ema/acc1``, ``lr``). A logger is a :class:`MetricLogger` that says how
to open, write, finish and close; it runs on rank 0 only.

The trainer's callbacks put the loggers before checkpointing, so an epoch's scalars are
written before its checkpoint: a resumed run drops only what came after its checkpoint
(TensorBoard's ``purge_step``, the CSV files' truncation) and misses nothing.
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


def epoch_scalars(state: RunState) -> dict[str, float]:
    """An epoch's scalars: its training summary, its evaluation (and the EMA model's), the
    best test top-1 so far."""
    train, test = state.train_metrics, state.test_metrics
    scalars = {
        "train/acc1": train["acc1"],
        "train/epoch_loss": train["loss"],
        "test/loss": test["loss"],
        "test/acc1": test["acc1"],
        "test/acc5": test["acc5"],
        "best/acc1": state.best["acc1"],
    }
    return {**scalars, **_ema_scalars(test, "test_ema")}


def final_scalars(state: RunState) -> dict[str, float]:
    """The finished run's metrics, the values a table of runs (TensorBoard's HParams tab,
    W&B's summary, MLflow's run list) shows beside the hyper-parameters."""
    test, best = state.test_metrics, state.best
    scalars = {
        "final/acc1": test["acc1"],
        "best/acc1": best["acc1"],
        "final/acc5": test["acc5"],
        "final/loss": test["loss"],
        "final/train_loss": state.train_metrics["loss"],
    }
    return {**scalars, **_ema_scalars(test, "final_ema")}


def plain(value: Any) -> int | float | str | bool:
    """A hyper-parameter value as loggers take it: lists and None as their YAML-ish text."""
    if isinstance(value, bool | int | float | str):
        return value
    return "null" if value is None else str(value)


class MetricLogger(Callback):
    """Rank 0 writes; ``hparams`` is the curated set (overridden keys first), ``config`` the
    whole flattened config, for loggers that keep both."""

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

    # What a logger implements.
    def open(self, trainer: Trainer, state: RunState) -> None:
        raise NotImplementedError

    def write(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """After each epoch's scalars."""

    def finish(self, scalars: dict[str, float], step: int) -> None:
        """The run is complete: ``scalars`` are its final and best metrics."""
        self.write(scalars, step)

    def close(self) -> None:
        """Always, on every exit path."""

    # The events.
    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self.active = trainer.run.strategy.is_main
        if self.active:
            self.open(trainer, state)

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        if self.active:
            self.write(step_scalars(metrics, state), state.global_step)

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        if self.active:
            self.write(epoch_scalars(state), state.global_step)
            self.flush()

    def on_fit_end(self, trainer: Trainer, state: RunState) -> None:
        if self.active:
            self.finish(final_scalars(state), state.global_step)

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        if self.active:
            self.close()
        self.active = False
