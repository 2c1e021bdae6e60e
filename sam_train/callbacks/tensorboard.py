"""TensorBoard scalars and HParams in the run folder (rank 0).

HParams: TensorBoard's table ticks the first five hyper-parameters, those whose values differ
between the runs first, then by name; with the whole flattened config (about 60 keys) that was
``augment.*``, and the runs of a SAM-vs-SGD sweep looked identical there. The callback logs the
curated set (:mod:`sam_train.hparams`: the overridden keys, then a core set) in the run's
``hparams/`` session folder when it starts, and the final and best metrics there when it ends.
No experiment summary is written: TensorBoard then computes which values differ (it does not
for a written one) and takes the metric columns from the session folder's scalars alone.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger, plain
from sam_train.errors import ConfigError

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer


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
        "another hydra.run.dir or logger=none"
    )


HPARAMS_DIR = "hparams"  # the HParams session: its hyper-parameters and final metrics only


class TensorBoard(MetricLogger):
    """``SummaryWriter`` events; a resumed run purges what an interrupted session wrote after
    its checkpoint, so every step's scalars appear once."""

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        *,
        log_hparams: bool = True,
    ) -> None:
        super().__init__(run_dir, hparams, config)
        self.log_hparams = log_hparams and bool(self.hparams)
        self.writer = None

    def _writer(self, folder: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=_utf8_path(folder), purge_step=purge_step)

    def _hparam_summaries(self) -> tuple:
        from torch.utils.tensorboard.summary import hparams

        return hparams({key: plain(value) for key, value in self.hparams.items()}, {})

    def open(self, trainer: Trainer, state: RunState) -> None:
        # Everything at the checkpoint's step was written before the checkpoint: keep it.
        purge = state.global_step + 1 if state.global_step else None
        self.writer = self._writer(self.run_dir, purge)
        if self.log_hparams and purge is None:
            with self._writer(self.run_dir / HPARAMS_DIR) as session:
                session.file_writer.add_summary(self._hparam_summaries()[1])

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, scalars: dict[str, float], step: int) -> None:
        """The final and best metrics: the HParams table's metric columns."""
        if not self.log_hparams:
            self.log(scalars, step)
            return
        with self._writer(self.run_dir / HPARAMS_DIR) as session:
            for name, value in scalars.items():
                session.add_scalar(name, value, step)
            session.file_writer.add_summary(self._hparam_summaries()[2])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
