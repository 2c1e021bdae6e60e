"""``results.json``: the run's final and best metrics, written once every epoch is done."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sam_train.run_files import RESULTS_NAME
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")


def results_of(state: RunState, epochs: int, world_size: int) -> dict[str, Any]:
    """The summary a complete run reports, from its state alone (so a resumed run's totals
    cover every session, and a complete run re-reported gives the same numbers)."""
    test, train, best = state.test_metrics, state.train_metrics, state.best
    return {
        "final_acc1": test.get("acc1"),
        "final_acc5": test.get("acc5"),
        "best_acc1": best["acc1"],
        "best_acc5": best["acc5"],
        "best_epoch": best["epoch"] + 1,
        "final_train_loss": train.get("loss"),
        "epochs": epochs,
        "test_images": test.get("count"),
        "skipped_steps": state.skipped_steps,
        "train_seconds": round(state.train_seconds, 2),
        "images_per_sec": round(state.images_seen / max(state.train_seconds, 1e-9), 1),
        "world_size": world_size,
    }


def write_json(path: Path, values: dict[str, Any]) -> None:
    """Strict JSON: a NaN or infinity is written as null, never as a bare ``NaN``."""
    clean = {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in values.items()
    }
    path.write_text(json.dumps(clean, indent=2, allow_nan=False) + "\n")


class Results(Callback):
    def __init__(self, run_dir: Path, extra: dict[str, Any] | None = None) -> None:
        self.path = Path(run_dir) / RESULTS_NAME
        self.extra = extra or {}  # what the run was (sam, rho, seed), for tables of runs
        self.results: dict[str, Any] = {}
        self._session = (0, 0.0)  # (epochs done, clock) when this session started

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        self._session = (state.epoch(trainer.run.steps_per_epoch), time.perf_counter())

    def on_fit_end(self, trainer: Trainer, state: RunState) -> None:
        run = trainer.run
        self.results = {**results_of(state, run.epochs, run.strategy.world_size), **self.extra}
        # What the steps computed, averaged over this session's steps (since a resume)
        self.results.update(run.step.counts.summary())
        for callback in trainer.callbacks:
            self.results.update(callback.summary(state))
        self.results["epochs_run"] = run.epochs - self._session[0]  # in this session
        self.results["wall_time_s"] = round(time.perf_counter() - self._session[1], 2)
        if run.strategy.is_main:
            write_json(self.path, self.results)
            log.info(f"results in {self.path}")
