"""``train(cfg, run_dir)``: claim the run folder, decide how to start, build, fit.

Reads top to bottom: the strategy (processes), the run folder's lock and checks, the resume
decision (a complete run is left untouched; a changed trajectory is refused), the factory,
the callbacks, ``Trainer.fit``. Everything below this module takes built objects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from sam_train.build import (
    build_callbacks,
    build_run,
    build_trainer,
    config_from_checkpoint,
    describe_perturbation,
    describe_run,
    run_strategy,
)
from sam_train.callbacks import Results
from sam_train.callbacks.results import RESULTS_NAME
from sam_train.checkpoint import load_resume, restore, run_state, saved_config
from sam_train.errors import CheckpointError
from sam_train.logfile import CONSOLE_ONLY
from sam_train.resume import describe, epochs_grown, trajectory_changes
from sam_train.run_folder import RunLock, check_run_folder
from sam_train.state import RunState
from sam_train.strategy import Strategy, process_group

log = logging.getLogger("sam_train")


@dataclass(frozen=True)
class StartPlan:
    """How this session starts, decided on rank 0 and shared with every process."""

    checkpoint: str | None = None  # resume from this file; None: a fresh run
    complete_results: dict[str, Any] | None = None  # set when the run has nothing left to do
    grown: tuple[int, int] | None = None  # (old, new) trainer.epochs
    changed: tuple[str, ...] = ()  # keys accepted with resume_strict=false


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(
    cfg: DictConfig,
    run_dir: Path,
    *,
    prepare_folder: Callable[[Path], None] | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Train as configured; return the results also written to results.json.

    ``prepare_folder(run_dir)`` runs on rank 0 once the folder is known to be this run's
    (the CLI writes Hydra's ``.hydra/`` files there). ``overrides`` are the command line's
    (Hydra's task overrides): the loggers' hyper-parameter tables lead with them.
    """
    owns_group = not torch.distributed.is_initialized()  # the CLI may have joined already
    strategy = run_strategy(cfg)
    try:
        run_dir = Path(strategy.broadcast_object(str(run_dir)))
        with contextlib.ExitStack() as folder_lock:
            config = OmegaConf.to_container(cfg, resolve=True)

            def claim() -> StartPlan:
                folder_lock.enter_context(RunLock(run_dir))
                check_run_folder(run_dir, resume=cfg.resume)
                return plan_start(cfg, run_dir, config)

            plan = strategy.main_decides(claim)
            if plan.complete_results is not None:
                return plan.complete_results
            if prepare_folder is not None and strategy.is_main:
                prepare_folder(run_dir)
            return _fit(cfg, run_dir, config, strategy, plan, overrides)
    finally:
        if owns_group:
            process_group.cleanup()


def plan_start(cfg: DictConfig, run_dir: Path, config: dict[str, Any]) -> StartPlan:
    """Fresh, resumed or already complete; refuses a resume that changes the trajectory."""
    found = load_resume(cfg.resume, run_dir)
    if found is None:
        return StartPlan()
    # On today's schema: an option added since the checkpoint was written takes its default
    # instead of reading as a change from None.
    saved: dict[str, Any] = {}
    if saved_config(found.state) is not None:
        saved = OmegaConf.to_container(
            config_from_checkpoint(found.state, found.path), resolve=True
        )
    changes = trajectory_changes(saved, config)
    if changes and cfg.resume_strict:
        raise CheckpointError(
            f"resume from {found.path} would change the run ({describe(changes)}); start a new "
            "run in another hydra.run.dir, or pass resume_strict=false to continue anyway"
        )
    if changes:
        log.warning("resuming with a changed config (resume_strict=false): %s", describe(changes))
    grown = epochs_grown(saved, config)
    state = run_state(found.state)
    if state.complete and grown is None:
        results_file = run_dir / RESULTS_NAME
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        log.info(
            "%s is complete (%s epochs, best test acc1 %s): nothing to do; raise "
            "trainer.epochs to train longer",
            run_dir,
            saved.get("trainer", {}).get("epochs"),
            state.best.get("acc1"),
            extra=CONSOLE_ONLY,  # a complete run's folder is left untouched, train.log too
        )
        return StartPlan(str(found.path), complete_results=results or state.to_dict())
    changed = tuple(change.key for change in changes)
    return StartPlan(str(found.path), grown=grown, changed=changed)


def _fit(
    cfg: DictConfig,
    run_dir: Path,
    config: dict[str, Any],
    strategy: Strategy,
    plan: StartPlan,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    seed_everything(cfg.seed + strategy.rank)
    run = build_run(cfg, strategy, init_weights=plan.checkpoint is None)
    state = RunState()
    description = describe_run(cfg, run, run_dir)
    callbacks = build_callbacks(cfg, run_dir, config, description, overrides)
    if plan.checkpoint is not None:
        state = restore(run, Path(plan.checkpoint), callbacks, changed=plan.changed)
        if plan.grown is not None:
            state.complete = False
            log.info(
                "trainer.epochs grew from %d to %d: the schedule is rebuilt for %d epochs",
                *plan.grown,
                plan.grown[1],
            )
    if run.step.uses_sam and strategy.distributed:
        log.info("SAM under %d processes: %s", strategy.world_size, describe_perturbation(cfg, run))
    build_trainer(cfg, run, callbacks).fit(state)
    return next(c for c in callbacks if isinstance(c, Results)).results
