"""``logger=mlflow``: MLflow (``uv sync --extra mlflow``), by default a local SQLite store in
the run folder (``<run folder>/mlflow.db``; MLflow 3 refuses its old ``mlruns/`` file store
unless told otherwise): view it with ``mlflow ui --backend-store-uri sqlite:///<run
folder>/mlflow.db``. Through ``MlflowClient``, not MLflow's process-global active run. A
resumed run continues the same MLflow run (its id is in the checkpoint); MLflow cannot delete
points, so the resumed session skips the (name, step) pairs a dead session already stored
after the checkpoint (the same values: a resume is exact) and stores no point twice."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sam_train.callbacks.loggers import MetricLogger, plain

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

BATCH = 100  # MLflow's limit of params per log_batch call
STORE_NAME = "mlflow.db"


class MLflowLogger(MetricLogger):
    state_key = "MLflowLogger"  # in checkpoints: the class name they were first written with

    def __init__(
        self,
        *args: Any,
        tracking_uri: str | None = None,
        experiment: str = "sam-train",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tracking_uri = tracking_uri or f"sqlite:///{(self.run_dir / STORE_NAME).resolve()}"
        self.experiment = experiment
        self.run_id: str | None = None
        self.client = None
        self.stored: set[tuple[str, int]] = set()  # written by a dead session after its checkpoint

    def open(self, trainer: Trainer, state: RunState) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            self.stored = self._stored_after(state.global_step)
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (
            found.experiment_id if found else self.client.create_experiment(self.experiment)
        )
        run = self.client.create_run(experiment_id, run_name=self.run_dir.name)
        self.run_id = run.info.run_id
        params = [Param(k, str(plain(v))) for k, v in {**self.config, **self.hparams}.items()]
        for start in range(0, len(params), BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + BATCH])

    def _stored_after(self, step: int) -> set[tuple[str, int]]:
        names = self.client.get_run(self.run_id).data.metrics
        history = (self.client.get_metric_history(self.run_id, name) for name in names)
        return {(m.key, m.step) for metrics in history for m in metrics if m.step > step}

    def write(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        fresh = {k: v for k, v in scalars.items() if (k, step) not in self.stored}
        metrics = [Metric(name, float(value), now, step) for name, value in fresh.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, scalars: dict[str, float], step: int) -> None:
        self.log(scalars, step)
        self.client.set_terminated(self.run_id, status="FINISHED")
        self.client = None  # close() leaves a finished run alone

    def close(self) -> None:
        """A session that stops before the end leaves the run KILLED (a resume reopens it)."""
        if self.client is not None:
            self.client.set_terminated(self.run_id, status="KILLED")
            self.client = None

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.run_id = state.get("run_id")
