"""``logger=wandb``: Weights & Biases (``uv sync --extra wandb``). ``WANDB_MODE=offline`` (or
``logger.wandb.mode=offline``) writes the run under ``<run folder>/wandb/`` without a network;
``wandb sync`` uploads it later. A resumed run continues the same W&B run (its id is in the
checkpoint); W&B keeps what a dead session logged after its checkpoint (it cannot remove
points) and ignores steps it has already seen."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer


class WandbLogger(MetricLogger):
    state_key = "WandbLogger"  # in checkpoints: the class name they were first written with

    def __init__(
        self,
        run_dir: Path,
        hparams: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        *,
        project: str = "sam-train",
        entity: str | None = None,
        mode: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        super().__init__(run_dir, hparams, config)
        self.options = {"project": project, "entity": entity, "mode": mode, "tags": tags or None}
        self.run_id: str | None = None
        self.run = None

    def open(self, trainer: Trainer, state: RunState) -> None:
        import wandb

        self.run = wandb.init(
            dir=str(self.run_dir),
            name=self.run_dir.name,
            id=self.run_id,
            resume="allow",
            config={**self.config, **self.hparams},
            **self.options,
        )
        self.run_id = self.run.id

    def write(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

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
