"""``logger=wandb``: Weights & Biases (``uv sync --extra wandb``). ``WANDB_MODE=offline`` (or
``logger.wandb.mode=offline``) writes the run under ``<run folder>/wandb/`` without a network;
``wandb sync`` uploads it later. A resumed run continues the same W&B run (its id is in the
checkpoint); W&B cannot remove points, so the resumed session skips the (name, step) pairs a
dead session's transaction logs under ``<run folder>/wandb/`` already hold after the
checkpoint (the same values: a resume is exact) and no point is written twice.

wandb's service (``wandb-core``) keeps a step's row open until the next step begins and writes
its transaction log every 15 s by default, and a SIGKILL loses what it has not written. So a
step's scalars are gathered here and sent as one committed row, and before a checkpoint is
written (:meth:`WandbLogger.on_checkpoint`) the open row is committed and the checkpoint waits
until the session's log file holds it: every row a checkpoint covers is on disk before it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger
from sam_train.callbacks.wandb_records import FIRST_RECORD, history, records_after

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")

#: Seconds between the service's writes of its log file (wandb's default is 15): about the
#: longest a checkpoint waits for its rows.
WRITE_INTERVAL = 0.1
#: A checkpoint waits this long at most for the service (then says so and goes on).
WRITE_TIMEOUT = 60.0


class WandbLogger(MetricLogger):
    state_key = "WandbLogger"  # in checkpoints: the class name they were first written with

    def __init__(
        self,
        *args: Any,
        project: str = "sam-train",
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.options = {"project": project, "entity": entity, "mode": mode, "tags": tags or None}
        self.run_id: str | None = None
        self.run = None
        self.held: set[tuple[str, int]] = set()  # written by a dead session after its checkpoint
        self.row: tuple[int, dict[str, float]] = (-1, {})  # the open row: its step, its scalars
        self.sent = -1  # the last step sent as a committed row
        self.log_file: Path | None = None  # this session's, where a checkpoint waits for it
        self.on_disk = (FIRST_RECORD, -1)  # how far the log file was read, its last row's step

    def open(self, trainer: Trainer, state: RunState) -> None:
        import wandb

        if self.run_id is not None:
            self.held = self._held_after(state.global_step)
        self.run = wandb.init(
            dir=str(self.run_dir),
            name=self.run_dir.name,
            id=self.run_id,
            resume="allow",
            config={**self.config, **self.hparams},
            settings=wandb.Settings(**_settings(wandb)),
            **self.options,
        )
        self.run_id = self.run.id
        self.log_file = self._own_log(wandb)

    def _own_log(self, wandb: Any) -> Path | None:
        """This session's transaction log, where checkpoints wait for their rows (None: it
        writes none, or a wandb without the setting that makes it write often)."""
        settings = self.run.settings
        if not _settings(wandb) or self.run.disabled or settings.x_skip_transaction_log:
            return None
        return Path(settings.sync_file)

    def _held_after(self, step: int) -> set[tuple[str, int]]:
        """The (name, step) pairs past ``step`` in this run's earlier sessions' logs."""
        logs = (self.run_dir / "wandb").glob(f"*-{self.run_id}/run-{self.run_id}.wandb")
        rows = (row for log in logs for row in history(log))
        return {(name, at) for at, name, _value in rows if at > step}

    def write(self, scalars: dict[str, float], step: int) -> None:
        """Add to ``step``'s row (an epoch's last step hears the window's and the epoch's
        scalars): one W&B row per step, sent once the step is over."""
        if step != self.row[0]:
            self._send()
            self.row = (step, {})
        self.row[1].update({k: v for k, v in scalars.items() if (k, step) not in self.held})

    def _send(self) -> None:
        step, scalars = self.row
        if scalars:
            self.run.log(scalars, step=step, commit=True)
            self.sent = step
        self.row = (step, {})

    def on_checkpoint(self, trainer: Trainer, state: RunState) -> None:
        """Every row up to this step on disk before the checkpoint that covers it."""
        if self.run is None:
            return
        self._send()
        deadline = time.monotonic() + WRITE_TIMEOUT
        while self.log_file is not None and self._written_step() < self.sent:
            if time.monotonic() > deadline:  # a stuck service: warn once, wait no more
                log.warning(
                    "W&B: rows up to step %d not in %s after %.0f s; no longer waiting for them",
                    self.sent,
                    self.log_file,
                    WRITE_TIMEOUT,
                )
                self.log_file = None
            else:
                time.sleep(WRITE_INTERVAL / 4)

    def _written_step(self) -> int:
        """The step of the last row in this session's log file (read on from where it was)."""
        position, step = self.on_disk
        if self.log_file.is_file():
            for end, record in records_after(self.log_file, position):
                position = end
                if record.WhichOneof("record_type") == "history":
                    step = record.history.step.num
        self.on_disk = (position, step)
        return step

    def finish(self, scalars: dict[str, float], step: int) -> None:
        self.run.summary.update(scalars)

    def close(self) -> None:
        if self.run is not None:
            self._send()
            self.run.finish()
            self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")


def _settings(wandb: Any) -> dict[str, float]:
    """The service writes its log file every ``WRITE_INTERVAL`` s: a setting of wandb 0.31
    (older versions write on their own schedule, and checkpoints do not wait for them)."""
    interval = "x_transaction_log_flush_interval"
    known = getattr(wandb.Settings, "model_fields", {})
    return {interval: WRITE_INTERVAL} if interval in known else {}
