"""``logger=wandb``: Weights & Biases (``uv sync --extra wandb``). ``WANDB_MODE=offline`` (or
``logger.wandb.mode=offline``) writes the run under ``<run folder>/wandb/`` without a network;
``wandb sync`` uploads it later. A resumed run continues the same W&B run (its id is in the
checkpoint); W&B cannot remove points, so the resumed session skips the (name, step) pairs a
dead session's transaction logs under ``<run folder>/wandb/`` already hold after the
checkpoint (the same values: a resume is exact) and no point is written twice.

wandb's service writes a step's row when the next step begins, and its log file every 15 s
(``x_transaction_log_flush_interval``): a SIGKILL loses what it had not written yet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger
from sam_train.callbacks.wandb_records import history

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer


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
            **self.options,
        )
        self.run_id = self.run.id

    def _held_after(self, step: int) -> set[tuple[str, int]]:
        """The (name, step) pairs past ``step`` in this run's earlier sessions' logs."""
        logs = (self.run_dir / "wandb").glob(f"*-{self.run_id}/run-{self.run_id}.wandb")
        rows = (row for log in logs for row in history(log))
        return {(name, at) for at, name, _value in rows if at > step}

    def write(self, scalars: dict[str, float], step: int) -> None:
        fresh = {k: v for k, v in scalars.items() if (k, step) not in self.held}
        if fresh:
            self.run.log(fresh, step=step)

    def finish(self, scalars: dict[str, float], step: int) -> None:
        self.run.summary.update(scalars)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
