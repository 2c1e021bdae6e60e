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

from sam_train import callbacks as cb
from sam_train.build import Run, build_loggers, build_run, config_from_checkpoint, run_strategy
from sam_train.checkpoint import load_checkpoint, load_model_state, load_resume, set_rng_states
from sam_train.config.schema import best_metric_key
from sam_train.errors import CheckpointError
from sam_train.resume import describe, epochs_grown, trajectory_changes
from sam_train.run_folder import RunLock, check_run_folder
from sam_train.state import RunState
from sam_train.strategy import FSDPStrategy, Strategy, process_group
from sam_train.trainer import Trainer

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
    if isinstance(found.state.get("config"), dict):
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
    state = RunState.from_checkpoint(found.state)
    if state.complete and grown is None:
        results_file = run_dir / cb.results.RESULTS_NAME
        results = json.loads(results_file.read_text()) if results_file.is_file() else {}
        log.info(
            "%s is complete (%s epochs, best test acc1 %s): nothing to do; raise "
            "trainer.epochs to train longer",
            run_dir,
            saved.get("trainer", {}).get("epochs"),
            state.best.get("acc1"),
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
        eps = "one eps from the all-reduced first gradient (sam.sync_perturbation)"
        if isinstance(strategy, FSDPStrategy):
            eps = "one eps from the reduce-scattered global gradient (FSDP: sync implied)"
        elif not cfg.sam.sync_perturbation:
            eps = f"one eps per {cfg.sam.m or run.per_device_batch} examples (m-sharpness)"
        log.info("SAM under %d processes: %s", strategy.world_size, eps)
    metric = best_metric_key(cfg.checkpoint.best_metric)
    trainer = Trainer(run, callbacks, best_metric=metric, log_every=cfg.trainer.log_every)
    trainer.fit(state)
    return next(c for c in callbacks if isinstance(c, cb.Results)).results


def build_callbacks(
    cfg: DictConfig,
    run_dir: Path,
    config: dict[str, Any],
    description: str,
    overrides: Sequence[str] = (),
) -> list[cb.Callback]:
    """The callbacks a training run uses, in the order they hear each event. metrics.csv and
    the loggers come before checkpointing: an epoch's rows are written before its checkpoint,
    so a resume drops only what came after the checkpoint and never misses an epoch."""
    checkpoint = cfg.checkpoint
    callbacks: list[cb.Callback] = []
    if cfg.ema.decay:  # first: a step's checkpoint must hold the EMA updated by that step
        ema = cfg.ema
        callbacks.append(cb.ModelEMA(ema.decay, warmup=ema.warmup, warmup_power=ema.warmup_power))
    callbacks += [
        cb.ConsoleProgress(description),
        cb.Preemption(),
        cb.MetricsCSV(run_dir),
        *build_loggers(cfg, run_dir, overrides),
        cb.Checkpointing(
            run_dir,
            config,
            save_last=checkpoint.save_last,
            save_best=checkpoint.save_best,
            every_n_steps=checkpoint.every_n_steps,
            keep_last=checkpoint.keep_last,
        ),
    ]
    rho = cfg.sam.rho if cfg.sam.name != "none" else 0.0
    callbacks.append(cb.Results(run_dir, {"sam": cfg.sam.name, "rho": rho, "seed": cfg.seed}))
    return callbacks


def _restore_optimizer(run: Run, saved: dict, path: Path, changed: tuple[str, ...]) -> None:
    if {"optimizer.name", "sam.name"} & set(changed):
        log.warning("optimizer state in %s is for another optimizer: starting it fresh", path)
        return
    configured = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    try:
        run.strategy.load_optimizer_state_dict(run.model, run.optimizer, saved)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"optimizer state in {path} does not fit: {err}") from err
    if any(key.startswith(("optimizer.", "sam.")) for key in changed):
        for group, values in zip(run.optimizer.param_groups, configured, strict=True):
            group.update(values)


def describe_run(cfg: DictConfig, run: Run, run_dir: Path) -> str:
    """The run's first line: model, data, optimizer (``SAM over SGD``, or ``SGD without SAM``
    for ``sam=none``), device (with torch's CPU threads), processes, folder."""
    params = sum(p.numel() for p in run.model.parameters())
    base = type(run.step.base_optimizer).__name__
    optimizer = f"{type(run.optimizer).__name__} over {base}" if run.step.uses_sam else base
    if not run.step.uses_sam:
        optimizer += " without SAM (sam=none)"
    device = str(run.device)
    if run.device.type == "cpu":
        threads = torch.get_num_threads()
        device += f" ({threads} thread{'s' * (threads != 1)}, trainer.cpu_threads)"
    return (
        f"{cfg.model.name} ({params / 1e6:.2f}M params) on {cfg.dataset.name} "
        f"({len(run.data.train)} train / {len(run.data.test)} test images), {optimizer}, "
        f"device {device}, {run.strategy.world_size} process(es), run folder {run_dir}"
    )


def restore(
    run: Run, path: Path, callbacks: list[cb.Callback], *, changed: tuple[str, ...] = ()
) -> RunState:
    """Load a checkpoint into the built run; the schedule follows from the config and the step.

    The scheduler's saved state is not loaded: timm's schedules are functions of the update
    count, and their state holds the old length, which would override a grown
    ``trainer.epochs`` (every new step at the final lr). ``changed`` lists the config keys a
    ``resume_strict=false`` resume accepted: the new optimizer hyper-parameters win over the
    saved ones, and another optimizer or SAM variant starts its state fresh.
    """
    checkpoint = load_checkpoint(path, map_location=run.device)
    load_model_state(run.model, checkpoint["model"], path, load=run.strategy.load_model_state_dict)
    _restore_optimizer(run, checkpoint["optimizer"], path, changed)
    if run.scaler is not None and checkpoint.get("scaler"):
        run.scaler.load_state_dict(checkpoint["scaler"])
    state = RunState.from_checkpoint(checkpoint)
    run.scheduler.step_update(num_updates=state.global_step)
    strategy = run.strategy
    if len(checkpoint["rng"]) == strategy.world_size:  # same layout: continue each rank exactly
        set_rng_states(checkpoint["rng"][strategy.rank])
        rank_buffers = (checkpoint.get("rank_buffers") or [None] * strategy.world_size)[
            strategy.rank
        ]
        if rank_buffers is not None:
            own = dict(run.model.named_buffers())
            with torch.no_grad():
                for name, value in rank_buffers.items():
                    own[name].copy_(value)
    saved = checkpoint.get("callbacks", {})
    for callback in callbacks:
        if type(callback).__name__ in saved:
            callback.load_state_dict(saved[type(callback).__name__])
    log.info("resumed from %s at step %d", path, state.global_step)
    return state
