"""Console lines on rank 0: the run's description, progress every ``log_every`` steps, one
summary per epoch, and the final line. Lines, not carriage-return bars: they read the same in
a terminal, a SLURM log file or CI output."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class ConsoleProgress(Callback):
    def __init__(self, description: str = "") -> None:
        self.description = description

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self.enabled = trainer.run.strategy.is_main
        if self.enabled and self.description:
            log.info(self.description)

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        run = trainer.run
        parts = [
            f"epoch {metrics['epoch'] + 1}/{run.epochs}",
            f"step {metrics['step']}/{run.steps_per_epoch}",
            f"loss {metrics['train/loss']:.4g}",
            f"lr {metrics['lr']:.4g}",
            f"img/s {metrics['throughput/images_per_sec']:.4g}",
            f"eta {format_duration(metrics['eta_seconds'])}",
        ]
        log.info("  ".join(parts))

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        if not self.enabled:
            return
        train, test = state.train_metrics, state.test_metrics
        epoch = state.epoch(trainer.run.steps_per_epoch)
        ema = f"  ema acc1 {test['ema_acc1']:.2f}" if "ema_acc1" in test else ""
        log.info(
            f"epoch {epoch}/{trainer.run.epochs}  train loss {train['loss']:.4f}  "
            f"train acc1 {train['acc1']:.2f}  test loss {test['loss']:.4f}  "
            f"test acc1 {test['acc1']:.2f}  test acc5 {test['acc5']:.2f}{ema}  "
            f"({test['count']} test images)"
        )

    def on_fit_end(self, trainer: Trainer, state: RunState) -> None:
        if self.enabled:
            best = state.best
            log.info(
                f"done in {format_duration(state.train_seconds)} of training: final test acc1 "
                f"{state.test_metrics['acc1']:.2f}, best {best['acc1']:.2f} "
                f"(epoch {best['epoch'] + 1})"
            )
