"""``logger=csv``: every logged scalar as a ``step,name,value`` row of ``scalars.csv`` (the
scalars TensorBoard gets, for readers without it: ``pandas.read_csv(...).pivot(...)``)."""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger
from sam_train.callbacks.metrics_csv import keep_rows

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

FIELDS = ("step", "name", "value")


class CSVLogger(MetricLogger):
    def __init__(self, *args: Any, filename: str = "scalars.csv", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.path = self.run_dir / filename
        self.file = None

    def open(self, trainer: Trainer, state: RunState) -> None:
        """A resumed run drops the rows a dead session wrote after its checkpoint."""
        keep_rows(self.path, FIELDS, lambda row: int(row["step"]) <= state.global_step)
        self.file = self.path.open("a", newline="")
        self.writer = csv.writer(self.file)

    def write(self, scalars: dict[str, float], step: int) -> None:
        self.writer.writerows((step, name, value) for name, value in scalars.items())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
