"""TensorBoard scalars and HParams in the run folder (rank 0)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.base import Callback
from sam_train.errors import ConfigError

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

# Window metrics the trainer reports that are bookkeeping, not scalars to plot.
_NOT_SCALARS = ("epoch", "step", "eta_seconds")
HPARAM_METRICS = ("test/acc1", "test/acc5", "test/loss", "train/loss")


def _utf8_path(folder: Path) -> str:
    """TensorBoard encodes paths as UTF-8: a folder below a working directory named in another
    encoding is given relative to it; a folder whose own name is not UTF-8 is refused."""
    for candidate in (str(folder), os.path.relpath(folder)):
        try:
            candidate.encode("utf-8")
        except UnicodeEncodeError:
            continue
        return candidate
    raise ConfigError(
        f"TensorBoard cannot write to {os.fsencode(folder)!r}, whose name is not UTF-8: choose "
        "another hydra.run.dir or set logger.tensorboard=false"
    )


class TensorBoard(Callback):
    """``SummaryWriter`` events; a resumed run purges what an interrupted session wrote after
    its checkpoint, so every step's scalars appear once."""

    def __init__(self, run_dir: Path, hparams: dict[str, Any] | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.hparams = hparams or {}
        self.writer = None

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        if not trainer.run.strategy.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        purge = state.global_step if state.global_step else None
        self.writer = SummaryWriter(log_dir=_utf8_path(self.run_dir), purge_step=purge)
        if self.hparams and purge is None:
            plain = {
                k: v if isinstance(v, int | float | str | bool) else str(v)
                for k, v in self.hparams.items()
            }
            for summary in hparams(plain, dict.fromkeys(HPARAM_METRICS, 0.0)):
                self.writer.file_writer.add_summary(summary)

    def _scalars(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        scalars = {k: v for k, v in metrics.items() if k not in _NOT_SCALARS}
        scalars["train/skipped_steps"] = state.skipped_steps
        self._scalars(scalars, state.global_step)

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        train, test = state.train_metrics, state.test_metrics
        scalars = {
            "train/acc1": train["acc1"],
            "train/epoch_loss": train["loss"],
            "test/loss": test["loss"],
            "test/acc1": test["acc1"],
            "test/acc5": test["acc5"],
        }
        for name in ("loss", "acc1", "acc5"):  # the EMA's scores, when ema.decay is set
            if f"ema_{name}" in test:
                scalars[f"test_ema/{name}"] = test[f"ema_{name}"]
        self._scalars(scalars, state.global_step)
        if self.writer is not None:
            self.writer.flush()

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
