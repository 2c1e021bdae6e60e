"""TensorBoard scalars and HParams in the run folder (rank 0): one TensorBoard run per run.

Tags: TensorBoard's default tab (Time Series) lays out tag groups (the part before the first
``/``) alphabetically and opens on the first, so the loggers' scalars are filed under
``test/``, ``test_ema/`` and ``train/`` (:func:`tensorboard_tag`): it opens on test accuracy
and loss, then EMA and training; ``best/acc1`` is ``test/best_acc1``, ``lr`` ``train/lr``.

HParams: TensorBoard's table ticks the first five hyper-parameters, those whose values differ
between the runs first, then by name; with the whole flattened config (about 60 keys) that was
``augment.*``, and the runs of a SAM-vs-SGD sweep looked identical there. The callback logs the
curated set (:mod:`sam_train.hparams`: the overridden keys, then a core set) when it starts,
and the session's end when it finishes, in the run's own events: a ``hparams/`` folder of its
own would list every run twice. The metric columns are the last value of each scalar
(``test/acc1``: the final top-1, ``test/best_acc1``: the best), so no single-point ``final/*``
charts are written. No experiment summary is written: TensorBoard then computes which values
differ (it does not for a written one).
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


GROUPS = ("test", "test_ema", "train")  # the tag groups, the default tab's first cards


def tensorboard_tag(name: str) -> str:
    """The loggers' scalar name as TensorBoard shows it: under one of :data:`GROUPS`
    (``best/acc1`` -> ``test/best_acc1``, ``lr`` -> ``train/lr``, ``sam/x`` -> ``train/sam_x``)."""
    group, sep, _ = name.partition("/")
    if sep and group in GROUPS:
        return name
    home = "test" if group == "best" else "train"
    return f"{home}/{name.replace('/', '_')}"


class TensorBoard(MetricLogger):
    """``SummaryWriter`` events; a resumed run purges what an interrupted session wrote after
    its checkpoint, so every step's scalars appear once."""

    def __init__(self, *args: Any, log_hparams: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
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
            self.writer.file_writer.add_summary(self._hparam_summaries()[1])

    def write(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(tensorboard_tag(name), value, step)

    def flush(self) -> None:
        self.writer.flush()

    def finish(self, scalars: dict[str, float], step: int) -> None:
        """The session's end (the HParams table's status). The final and best metrics are
        already the last points of ``test/acc1`` and ``test/best_acc1``: not written again."""
        if self.log_hparams:
            self.writer.file_writer.add_summary(self._hparam_summaries()[2])
            self.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
