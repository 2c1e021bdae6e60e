"""Console output on rank 0: the run's description, progress every ``log_every`` steps, one
summary per epoch, and the final line.

In a terminal (stdout and stderr both ttys) progress is a tqdm bar per epoch, and the
``log_every`` lines go to ``train.log`` only; elsewhere (a SLURM log file, CI, a pipe) they are
plain lines, as in the file."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from sam_train.console import to_log_files
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.step import StepOutput
    from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def is_terminal() -> bool:
    """A person watching: both streams are terminals (a bar in a file would be noise)."""
    return all(getattr(stream, "isatty", lambda: False)() for stream in (sys.stdout, sys.stderr))


class ConsoleProgress(Callback):
    """``bar``: a progress bar instead of console lines; None: when :func:`is_terminal`."""

    def __init__(self, description: str = "", bar: bool | None = None) -> None:
        self.description = description
        self.bar_wanted = bar
        self.bar: tqdm | None = None
        self.enabled = self.use_bar = False
        self._redirect = contextlib.ExitStack()

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self.enabled = trainer.run.strategy.is_main
        wanted = is_terminal() if self.bar_wanted is None else self.bar_wanted
        self.use_bar = self.enabled and wanted
        if self.use_bar:  # log lines printed above the bar, not through it
            self._redirect.enter_context(logging_redirect_tqdm())
        if self.enabled and self.description:
            log.info(self.description)

    def on_train_step_end(self, trainer: Trainer, state: RunState, output: StepOutput) -> None:
        if self.use_bar:
            self._open_bar(trainer, state).update(1)

    def _open_bar(self, trainer: Trainer, state: RunState) -> tqdm:
        """This epoch's bar, from the step being taken (a resume starts mid-epoch)."""
        if self.bar is None:
            epoch, done = divmod(state.global_step - 1, trainer.run.steps_per_epoch)
            self.bar = tqdm(
                total=trainer.run.steps_per_epoch,
                initial=done,
                desc=f"epoch {epoch + 1}/{trainer.run.epochs}",
                unit="step",
                leave=False,
                dynamic_ncols=True,
                file=sys.stderr,
            )
        return self.bar

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

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
        if not self.use_bar:
            log.info("  ".join(parts))
            return
        to_log_files("  ".join(parts))
        self._open_bar(trainer, state).set_postfix_str("  ".join(parts[2:]), refresh=False)

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        if not self.enabled:
            return
        self._close_bar()
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

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        self._close_bar()
        self._redirect.close()
