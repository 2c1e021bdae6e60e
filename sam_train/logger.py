"""Run logging: console progress through ``logging`` and TensorBoard on rank 0 only."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("sam_train")


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class RunLogger:
    """Writes scalars to TensorBoard (events in the run folder) and lines to the console.

    Lines, not carriage-return progress bars: they read the same in a terminal, a SLURM log
    file or CI output. Non-main ranks write nothing.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        purge_step: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: a resumed run hides the events an interrupted run wrote after it.
            self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge_step)
        self._start = time.perf_counter()

    def info(self, message: str) -> None:
        if self.enabled:
            log.info(message)

    def scalars(self, metrics: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(name, value, step)

    def hparams(self, config: Mapping[str, Any], metric_names: list[str]) -> None:
        """Record the resolved config in TensorBoard's HParams tab, tied to the run's scalars."""
        if self.writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        flat = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in config.items()
        }
        for summary in hparams(flat, dict.fromkeys(metric_names, 0.0)):
            self.writer.file_writer.add_summary(summary)

    def progress(
        self,
        *,
        epoch: int,
        epochs: int,
        step: int,
        steps: int,
        eta_seconds: float,
        metrics: Mapping[str, float],
    ) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {epoch + 1}/{epochs}", f"step {step}/{steps}"]
        for name, value in metrics.items():
            parts.append(f"{name} {value:.4g}")
        parts.append(f"eta {format_duration(eta_seconds)}")
        log.info("  ".join(parts))

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
