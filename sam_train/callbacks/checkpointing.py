"""Checkpoints at epoch ends, every N steps, and always when the run is stopped; the
``checkpoint.keep_best`` best epochs by ``checkpoint.best_metric``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.checkpoint import CHECKPOINTING, LAST_NAME, CheckpointWriter, build_payload
from sam_train.run_folder import CHECKPOINTS_DIR
from sam_train.trainer import LOWER_IS_BETTER, Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.step import StepOutput
    from sam_train.trainer import Trainer


class Checkpointing(Callback):
    """Writes ``checkpoints/last.pt``, ``best.pt`` and ``step_*.pt`` snapshots (rank 0).

    A stop (signal) always writes last.pt, whatever ``save_last`` says: a stopped run must
    leave something to resume from. Checkpoints are written after the base step, so they
    never hold the perturbed weights w + eps.

    ``keep_best`` > 0 keeps the epochs that rank best by the trainer's ``best_metric`` as
    ``best_step_<step>.pt`` (a tie keeps the earlier epoch, as best.pt does). The ranking is
    this callback's state in every checkpoint, so a resumed run goes on ranking, and files a
    dead session wrote after its checkpoint are removed when the run resumes.
    """

    state_key = CHECKPOINTING

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        save_last: bool = True,
        save_best: bool = True,
        every_n_steps: int = 0,
        keep_last: int = 0,
        keep_best: int = 0,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = config  # the resolved config, compared with the next one on resume
        self.save_last = save_last
        self.save_best = save_best
        self.every_n_steps = every_n_steps
        self.keep_last = keep_last
        self.keep_best = keep_best
        self.top: list[tuple[float, int]] = []  # (metric, global_step) of the kept, best first
        self.writer: CheckpointWriter | None = None
        self._saved_step = -1

    @property
    def last(self) -> Path:
        return self.run_dir / CHECKPOINTS_DIR / LAST_NAME

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        if trainer.run.strategy.is_main:
            self.writer = CheckpointWriter(self.run_dir, keep_last=self.keep_last)
        # A stop wrote last.pt although save_last=false: keep it current from then on, or a
        # later resume=auto would go back to that stop.
        self.save_last = self.save_last or self.last.is_file()
        self.top = self.top[: self.keep_best]
        if self.writer is not None and self.keep_best:
            self.writer.prune_top({step for _, step in self.top})

    def on_train_step_end(self, trainer: Trainer, state: RunState, output: StepOutput) -> None:
        at_epoch_end = state.global_step % trainer.run.steps_per_epoch == 0
        if self.every_n_steps and state.global_step % self.every_n_steps == 0 and not at_epoch_end:
            self.save(trainer, state, last=True)

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        top = self._enters_top(trainer.best_metric, state)
        self.save(trainer, state, last=self.save_last, best=is_best and self.save_best, top=top)
        if top and self.writer is not None:
            self.writer.prune_top({step for _, step in self.top})

    def _enters_top(self, metric: str, state: RunState) -> bool:
        """Rank this epoch among the kept ones; whether it is kept."""
        value = state.test_metrics.get(metric)
        if not self.keep_best or value is None or not math.isfinite(value):
            return False
        sign = 1.0 if metric.endswith(LOWER_IS_BETTER) else -1.0
        ranked = sorted([*self.top, (value, state.global_step)], key=lambda e: sign * e[0])
        self.top = ranked[: self.keep_best]  # sorted() is stable: a tie keeps the earlier
        return any(step == state.global_step for _, step in self.top)

    def state_dict(self) -> dict[str, Any] | None:
        return {"top": [list(entry) for entry in self.top]} if self.keep_best else None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.top = [(float(value), int(step)) for value, step in state.get("top", [])]

    def on_stop(self, trainer: Trainer, state: RunState) -> None:
        if self._saved_step != state.global_step:
            self.save(trainer, state, last=True)

    def save(
        self,
        trainer: Trainer,
        state: RunState,
        *,
        last: bool,
        best: bool = False,
        top: bool = False,
    ) -> None:
        """Every process builds the payload (collectives), then rank 0 writes it."""
        self._saved_step = state.global_step
        if not (last or best or top):
            return
        for callback in trainer.callbacks:
            callback.on_checkpoint(trainer, state)
        payload = build_payload(trainer.run, state, trainer.callbacks, self.config)
        if self.writer is not None and payload is not None:
            snapshot = last and self.keep_last > 0
            self.writer.save(payload, last=last, best=best, snapshot=snapshot, top=top)
