"""``metrics.csv``: one row per epoch, the table a user opens first (and
``scripts/plot_runs.py`` draws), written by rank 0 whatever the loggers.

A resumed run continues the file: rows past the checkpoint's epoch (written by a session that
died before checkpointing them) are dropped, the rest kept, so every epoch has one row. The
row is written before the epoch's checkpoint (the callback comes before checkpointing).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.run_files import METRICS_NAME
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

#: column -> where its value comes from (train: state.train_metrics, test: state.test_metrics).
COLUMNS: dict[str, tuple[str, str]] = {
    "train_loss": ("train", "loss"),
    "train_acc1": ("train", "acc1"),
    "test_loss": ("test", "loss"),
    "test_acc1": ("test", "acc1"),
    "test_acc5": ("test", "acc5"),
    "test_ema_loss": ("test", "ema_loss"),  # empty without EMA
    "test_ema_acc1": ("test", "ema_acc1"),
    "test_ema_acc5": ("test", "ema_acc5"),
    "epoch_seconds": ("train", "epoch_seconds"),
    "eval_seconds": ("test", "seconds"),
    "images_per_sec": ("train", "images_per_sec"),
}
FIELDS = ("epoch", "step", "lr", *COLUMNS)


def keep_rows(path: Path, fields: Sequence[str], keep: Callable[[dict[str, str]], bool]) -> None:
    """Rewrite the CSV file ``path`` (atomically) with ``fields`` as its header and the rows
    that ``keep``; a missing file is created with the header alone."""
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as file:
            rows = [row for row in csv.DictReader(file) if keep(row)]
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(fields), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(partial, path)


def _cell(value: Any) -> str | int | float:
    if value is None:
        return ""
    return round(value, 6) if isinstance(value, float) else value


class MetricsCSV(Callback):
    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / METRICS_NAME
        self.active = False
        self.lr: float | None = None  # the lr of the epoch's last step

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self.active = trainer.run.strategy.is_main
        if self.active:
            done = state.epoch(trainer.run.steps_per_epoch)
            keep_rows(self.path, FIELDS, lambda row: int(row["epoch"]) <= done)

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        self.lr = metrics["lr"]

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        if not self.active:
            return
        sources = {"train": state.train_metrics, "test": state.test_metrics}
        row = {
            "epoch": state.epoch(trainer.run.steps_per_epoch),
            "step": state.global_step,
            "lr": self.lr,
        }
        row.update({column: sources[part].get(key) for column, (part, key) in COLUMNS.items()})
        with self.path.open("a", newline="") as file:
            csv.DictWriter(file, fieldnames=FIELDS).writerow({k: _cell(v) for k, v in row.items()})
