"""``train(cfg, run_dir)``: build every object from the config, then hand them to the engine.

Reads top to bottom like torchvision's reference scripts: distributed set-up, seeds, data,
model, optimizer, scheduler, resume, then the epoch loop with evaluation, checkpoints and
results.json. A run's position is its global step: the epoch and the batches to skip follow
from it, so a run resumed from any checkpoint (epoch end or mid-epoch) continues exactly.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import timm.layers
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sam_train import distributed
from sam_train.builders import build_optimizer, build_scheduler, flat_config, resolve_device
from sam_train.checkpoint import (
    CheckpointWriter,
    load_checkpoint,
    load_model_state,
    resolve_resume,
    rng_states,
    set_rng_states,
)
from sam_train.config import validate
from sam_train.data import build_datasets, build_loaders
from sam_train.engine import Engine
from sam_train.errors import ConfigError, Preempted
from sam_train.logger import RunLogger, format_duration
from sam_train.models import create_model
from sam_train.preemption import PreemptionFlag

log = logging.getLogger("sam_train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate as configured; return the results also written to results.json."""
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    owns_group = not torch.distributed.is_initialized()  # the CLI may have joined already
    dist = distributed.init_distributed(device.type)
    try:
        return _train(cfg, run_dir, device, dist)
    finally:
        if owns_group:
            distributed.cleanup()


def _check_batch_split(cfg: DictConfig, world_size: int) -> int:
    """The per-device batch, which accumulation and m-sharpness must divide."""
    from sam_train.errors import ConfigError

    batch = cfg.trainer.batch_size
    if batch % world_size:
        raise ConfigError(
            f"trainer.batch_size={batch} (global) must be divisible by the {world_size} processes"
        )
    per_device = batch // world_size
    if per_device % cfg.trainer.accum_steps:
        raise ConfigError(
            f"trainer.accum_steps={cfg.trainer.accum_steps} must divide the per-device batch "
            f"{per_device} (trainer.batch_size={batch} over {world_size} processes)"
        )
    if cfg.sam.m is not None and cfg.sam.name != "none" and per_device % cfg.sam.m:
        raise ConfigError(
            f"sam.m={cfg.sam.m} must divide the per-device batch {per_device} "
            f"(trainer.batch_size={batch} over {world_size} processes)"
        )
    return per_device


def _prepare_model(model: nn.Module, cfg: DictConfig, device: torch.device, world_size: int):
    """SyncBatchNorm (several processes), then the device and memory format."""
    from sam_train.errors import ConfigError

    if cfg.model.sync_bn and world_size > 1:
        if device.type == "cpu":
            raise ConfigError(
                "model.sync_bn=true needs GPUs: torch's SyncBatchNorm has no CPU kernel"
            )
        model = timm.layers.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _datasets(cfg: DictConfig, download: bool):
    return build_datasets(
        cfg.dataset.name,
        root=cfg.dataset.root,
        num_classes=cfg.dataset.num_classes,
        image_size=cfg.dataset.image_size,
        download=download,
        verify_checksums=cfg.dataset.verify_checksums,
        label_noise=cfg.dataset.label_noise,
        test_fraction=cfg.dataset.test_fraction,
        seed=cfg.seed,
        augment=cfg.augment.name,
        cutout_size=cfg.augment.cutout_size,
    )


def _train(cfg: DictConfig, run_dir: Path, device: torch.device, dist: distributed.DistInfo):
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    shared_dir = Path(distributed.broadcast_object(str(run_dir)))
    if shared_dir != run_dir:
        log.warning("rank %d: using rank 0's run folder %s, not %s", dist.rank, shared_dir, run_dir)
    run_dir = shared_dir
    per_device_batch = _check_batch_split(cfg, dist.world_size)
    seed_everything(cfg.seed + dist.rank)

    # ---------------------------------------------------------------- data
    data = _datasets(cfg, download=cfg.dataset.download) if dist.is_main else None
    distributed.barrier()  # rank 0 downloads; the others read what it wrote
    if data is None:
        data = _datasets(cfg, download=False)
    loaders = build_loaders(
        data.train,
        data.test,
        batch_size=per_device_batch,
        eval_batch_size=cfg.trainer.eval_batch_size,
        num_workers=cfg.trainer.num_workers,
        seed=cfg.seed,
        pin_memory=device.type == "cuda",
        rank=dist.rank,
        world_size=dist.world_size,
        kind=cfg.dataset.loader,
        device=device,
    )
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(data.train)} "
            "training images: no full batch"
        )

    # ---------------------------------------------------------------- model and optimizer
    model = create_model(
        cfg.model.name,
        num_classes=data.num_classes,
        in_chans=cfg.dataset.in_chans,
        pretrained=cfg.model.pretrained,
        **cfg.model.kwargs,
    )
    model = _prepare_model(model, cfg, device, dist.world_size)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.sam, lr_min=cfg.scheduler.min_lr)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.trainer.amp == "fp16" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    # ---------------------------------------------------------------- resume
    best: dict[str, Any] = {"acc1": None, "acc5": None, "loss": None, "epoch": -1}
    global_step, skipped_steps = 0, 0
    rank_buffers: dict[str, torch.Tensor] | None = None
    resume_path = resolve_resume(cfg.resume, run_dir)
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location=device)
        load_model_state(model, state["model"], resume_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        global_step, best = state["global_step"], state["best"]
        skipped_steps = state.get("skipped_steps", 0)
        if len(state["rng"]) == dist.world_size:  # same layout: continue each rank exactly
            set_rng_states(state["rng"][dist.rank])
            rank_buffers = (state.get("rank_buffers") or [None] * dist.world_size)[dist.rank]
        log.info("resumed from %s at step %d", resume_path, global_step)
    start_epoch, skip_steps = divmod(global_step, steps_per_epoch)

    train_model: nn.Module = model  # checkpoints always hold ``model``'s plain state_dict
    if cfg.trainer.compile:
        # Inside DDP: the graphs hold no collective, and no_sync() and DDP's gradient hooks
        # stay in eager code, for both SAM passes.
        train_model = torch.compile(model)
    if dist.enabled:
        train_model = distributed.wrap_ddp(train_model, device)
    if rank_buffers is not None:  # after the wrap: DDP broadcasts rank 0's buffers at start
        own = dict(model.named_buffers())
        with torch.no_grad():
            for name, value in rank_buffers.items():
                own[name].copy_(value)

    logger = RunLogger(
        run_dir,
        enabled=dist.is_main,
        tensorboard=cfg.logger.tensorboard,
        purge_step=global_step if resume_path is not None else None,
    )
    engine = Engine(
        model=train_model,
        optimizer=optimizer,
        criterion=criterion,
        device=device,
        precision=cfg.trainer.amp,
        scaler=scaler,
        clip_grad_norm=cfg.trainer.clip_grad_norm,
        accum_steps=cfg.trainer.accum_steps,
        sync_perturbation=cfg.sam.sync_perturbation,
        sam_chunk=cfg.sam.m,
        channels_last=cfg.trainer.channels_last,
        scheduler=scheduler,
        logger=logger,
        log_every=cfg.trainer.log_every,
        global_step=global_step,
        skip_nonfinite=cfg.trainer.skip_nonfinite,
        max_bad_steps=cfg.trainer.max_bad_steps,
        skipped_steps=skipped_steps,
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"{cfg.model.name} ({n_params / 1e6:.2f}M params) on {cfg.dataset.name} "
        f"({len(data.train)} train / {len(data.test)} test images), {type(optimizer).__name__} "
        f"over {type(engine.base_optimizer).__name__}, device {device}, "
        f"{dist.world_size} process(es), run folder {run_dir}"
    )
    if engine.uses_sam and cfg.sam.sync_perturbation and dist.enabled:
        logger.info("SAM: one eps from the all-reduced first gradient (sync_perturbation)")
    elif engine.uses_sam and (dist.enabled or cfg.sam.m is not None):
        m = cfg.sam.m or per_device_batch
        logger.info(
            f"SAM: one eps per {m} examples (m-sharpness), per-device batch {per_device_batch}"
        )
    logger.hparams(flat_config(cfg), ["test/acc1", "test/acc5", "test/loss", "train/loss"])

    # ---------------------------------------------------------------- checkpoints, signals
    writer = CheckpointWriter(run_dir, keep_last=cfg.checkpoint.keep_last)
    config_container = OmegaConf.to_container(cfg, resolve=True)

    def save(is_best: bool = False) -> None:
        """Gather every rank's RNG state, then rank 0 writes (never the perturbed weights:
        the engine restores w before a step ends)."""
        rngs = distributed.gather_object(rng_states())
        # Replicas keep their own norm statistics between evaluations: keep every rank's.
        buffers = distributed.gather_object(
            {name: b.detach().cpu() for name, b in model.named_buffers()} if dist.enabled else None
        )
        if not dist.is_main or not cfg.checkpoint.save_last:
            return
        state = {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "global_step": engine.global_step,
            "epoch": engine.global_step // steps_per_epoch,
            "skipped_steps": engine.skipped_steps,
            "best": best,
            "config": config_container,
            "rng": rngs,
            "rank_buffers": buffers if dist.enabled else None,
        }
        writer.save(state, is_best=is_best and cfg.checkpoint.save_best)

    preemption = PreemptionFlag().install()
    check_every = cfg.trainer.log_every if dist.enabled else 1
    every_n = cfg.checkpoint.every_n_steps

    def on_step(step: int) -> None:
        at_epoch_end = step == steps_per_epoch  # the epoch-end checkpoint follows evaluation
        saved = False
        if every_n and engine.global_step % every_n == 0 and not at_epoch_end:
            save()
            saved = True
        if engine.global_step % check_every == 0 and preemption.should_stop(dist.enabled, device):
            if not saved:
                save()
            raise Preempted(
                f"stopped by signal {preemption.signal} at step {engine.global_step}; "
                f"checkpoint {writer.last}; continue with resume=auto hydra.run.dir={run_dir}"
            )

    # ---------------------------------------------------------------- epochs
    metric_key = cfg.checkpoint.best_metric.split("/")[1]
    lower_is_better = metric_key == "loss"
    epochs = cfg.trainer.epochs
    started = time.perf_counter()
    train_stats: dict[str, float] = {"loss": float("nan"), "images_per_sec": 0.0}
    test_stats: dict[str, float] = {}
    images_seen = 0
    try:
        for epoch in range(start_epoch, epochs):
            start_step = skip_steps if epoch == start_epoch else 0
            loaders.train_sampler.set_epoch(epoch, skip=start_step * per_device_batch)
            stats = engine.train_one_epoch(
                loaders.train,
                epoch=epoch,
                epochs=epochs,
                steps_per_epoch=steps_per_epoch,
                start_step=start_step,
                on_step=on_step,
            )
            train_stats = stats.as_dict()
            images_seen += stats.count  # summed over ranks
            scheduler.step(epoch + 1)
            test_stats = engine.evaluate(loaders.test)
            value = test_stats[metric_key]
            is_best = best[metric_key] is None or (
                value < best[metric_key] if lower_is_better else value > best[metric_key]
            )
            if is_best:
                best = {
                    "acc1": test_stats["acc1"],
                    "acc5": test_stats["acc5"],
                    "loss": test_stats["loss"],
                    "epoch": epoch,
                }
            logger.scalars(
                {
                    "train/acc1": train_stats["acc1"],
                    "train/epoch_loss": train_stats["loss"],
                    "test/loss": test_stats["loss"],
                    "test/acc1": test_stats["acc1"],
                    "test/acc5": test_stats["acc5"],
                },
                engine.global_step,
            )
            logger.info(
                f"epoch {epoch + 1}/{epochs}  train loss {train_stats['loss']:.4f}  "
                f"train acc1 {train_stats['acc1']:.2f}  test loss {test_stats['loss']:.4f}  "
                f"test acc1 {test_stats['acc1']:.2f}  test acc5 {test_stats['acc5']:.2f}  "
                f"({test_stats['count']} test images)"
            )
            save(is_best)
            logger.flush()
        if not test_stats:  # resumed after the last epoch: report the checkpoint's accuracy
            test_stats = engine.evaluate(loaders.test)
    finally:
        preemption.uninstall()
        logger.close()

    wall_time = time.perf_counter() - started
    results = {
        "final_acc1": test_stats.get("acc1"),
        "final_acc5": test_stats.get("acc5"),
        "best_acc1": best["acc1"],
        "best_acc5": best["acc5"],
        "best_epoch": best["epoch"] + 1,
        "final_train_loss": train_stats["loss"],
        "epochs": epochs,
        "epochs_run": epochs - start_epoch,
        "test_images": test_stats.get("count"),
        "skipped_steps": engine.skipped_steps,
        "wall_time_s": round(wall_time, 2),
        "images_per_sec": round(images_seen / max(wall_time, 1e-9), 1),
        "world_size": dist.world_size,
        "sam": cfg.sam.name,
        "rho": cfg.sam.rho if cfg.sam.name != "none" else 0.0,
        "seed": cfg.seed,
    }
    if dist.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        log.info(
            f"done in {format_duration(wall_time)}: final test acc1 {results['final_acc1']:.2f}, "
            f"best {results['best_acc1']:.2f} (epoch {results['best_epoch']}); "
            f"results in {run_dir / 'results.json'}"
        )
    return results
