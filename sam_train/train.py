"""``train(cfg, run_dir)``: build every object from the config, then hand them to the engine.

Reads top to bottom like torchvision's reference scripts: distributed set-up, seeds, data,
model, optimizer, scheduler, resume, then the epoch loop with evaluation, checkpoints and
results.json.
"""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from sam_train import distributed
from sam_train.builders import build_optimizer, build_scheduler, flat_config, resolve_device
from sam_train.checkpoint import CheckpointError, load_checkpoint, resolve_resume, save_checkpoint
from sam_train.config import validate
from sam_train.data import build_datasets, build_loaders
from sam_train.engine import Engine
from sam_train.logger import RunLogger, format_duration
from sam_train.models import create_model

log = logging.getLogger("sam_train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_states() -> dict[str, Any]:
    states = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    result = model.load_state_dict(state, strict=False)
    problems = []
    if result.missing_keys:
        problems.append(f"missing {result.missing_keys[:5]}")
    if result.unexpected_keys:
        problems.append(f"unexpected {result.unexpected_keys[:5]}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not match the model: {'; '.join(problems)}")


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train and evaluate as configured; return the results also written to results.json."""
    validate(cfg)
    device = resolve_device(cfg.trainer.device)
    dist = distributed.init_distributed(device.type)
    try:
        return _train(cfg, run_dir, device, dist)
    finally:
        distributed.cleanup()


def _train(cfg: DictConfig, run_dir: Path, device: torch.device, dist: distributed.DistInfo):
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    run_dir = Path(distributed.broadcast_object(str(run_dir)))
    seed_everything(cfg.seed + dist.rank)

    # ---------------------------------------------------------------- data
    data = (
        build_datasets(
            cfg.dataset.name,
            root=cfg.dataset.root,
            num_classes=cfg.dataset.num_classes,
            image_size=cfg.dataset.image_size,
            download=cfg.dataset.download and dist.is_main,
            verify_checksums=cfg.dataset.verify_checksums,
            label_noise=cfg.dataset.label_noise,
            test_fraction=cfg.dataset.test_fraction,
            seed=cfg.seed,
        )
        if dist.is_main
        else None
    )
    distributed.barrier()  # rank 0 downloads; the others read what it wrote
    if data is None:
        data = build_datasets(
            cfg.dataset.name,
            root=cfg.dataset.root,
            num_classes=cfg.dataset.num_classes,
            image_size=cfg.dataset.image_size,
            download=False,
            verify_checksums=cfg.dataset.verify_checksums,
            label_noise=cfg.dataset.label_noise,
            test_fraction=cfg.dataset.test_fraction,
            seed=cfg.seed,
        )
    per_rank_batch = cfg.trainer.batch_size // dist.world_size
    loaders = build_loaders(
        data.train,
        data.test,
        batch_size=per_rank_batch,
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
        from sam_train.errors import ConfigError

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
    ).to(device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.optimizer, cfg.sam)
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type) if cfg.trainer.amp == "fp16" else None
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)

    # ---------------------------------------------------------------- resume
    start_epoch, best = 0, {"acc1": -1.0, "acc5": 0.0, "epoch": -1}
    global_step = 0
    resume_path = resolve_resume(cfg.resume, run_dir)
    if resume_path is not None:
        state = load_checkpoint(resume_path, map_location=device)
        _load_model_state(model, state["model"], resume_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, global_step, best = state["epoch"] + 1, state["global_step"], state["best"]
        log.info("resumed from %s at epoch %d", resume_path, start_epoch)

    train_model: nn.Module = model
    if cfg.trainer.compile:
        train_model = torch.compile(model)
    if dist.enabled:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None
        )

    logger = RunLogger(run_dir, enabled=dist.is_main, tensorboard=cfg.logger.tensorboard)
    engine = Engine(
        model=train_model,
        optimizer=optimizer,
        criterion=criterion,
        device=device,
        precision=cfg.trainer.amp,
        scaler=scaler,
        clip_grad_norm=cfg.trainer.clip_grad_norm,
        accum_steps=cfg.trainer.accum_steps,
        channels_last=cfg.trainer.channels_last,
        scheduler=scheduler,
        logger=logger,
        log_every=cfg.trainer.log_every,
        global_step=global_step,
    )
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        f"{cfg.model.name} ({n_params / 1e6:.2f}M params) on {cfg.dataset.name} "
        f"({len(data.train)} train / {len(data.test)} test images), {type(optimizer).__name__} "
        f"over {type(engine.base_optimizer).__name__}, device {device}, "
        f"{dist.world_size} process(es), run folder {run_dir}"
    )
    logger.hparams(flat_config(cfg), ["test/acc1", "test/acc5", "test/loss", "train/loss"])

    # ---------------------------------------------------------------- epochs
    epochs = cfg.trainer.epochs
    started = time.perf_counter()
    train_stats: dict[str, float] = {"loss": float("nan"), "images_per_sec": 0.0}
    test_stats: dict[str, float] = {}
    images_seen = 0
    for epoch in range(start_epoch, epochs):
        if hasattr(loaders.train.sampler, "set_epoch"):
            loaders.train.sampler.set_epoch(epoch)
        stats = engine.train_one_epoch(
            loaders.train, epoch=epoch, epochs=epochs, steps_per_epoch=steps_per_epoch
        )
        train_stats = stats.as_dict()
        images_seen += stats.count * dist.world_size
        scheduler.step(epoch + 1)
        test_stats = engine.evaluate(loaders.test)
        is_best = test_stats["acc1"] > best["acc1"]
        if is_best:
            best = {"acc1": test_stats["acc1"], "acc5": test_stats["acc5"], "epoch": epoch}
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
        if dist.is_main:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "global_step": engine.global_step,
                "best": best,
                "config": OmegaConf.to_container(cfg, resolve=True),
                "rng": _rng_states(),
            }
            if cfg.checkpoint.save_last:
                save_checkpoint(state, run_dir / "checkpoints" / "last.pt")
            if cfg.checkpoint.save_best and is_best:
                save_checkpoint(state, run_dir / "checkpoints" / "best.pt")
        logger.flush()

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
        "wall_time_s": round(wall_time, 2),
        "images_per_sec": round(images_seen / max(wall_time, 1e-9), 1),
        "world_size": dist.world_size,
        "sam": cfg.sam.name,
        "rho": cfg.sam.rho if cfg.sam.name != "none" else 0.0,
        "seed": cfg.seed,
    }
    if dist.is_main:
        (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        logger.info(
            f"done in {format_duration(wall_time)}: final test acc1 {results['final_acc1']:.2f}, "
            f"best {results['best_acc1']:.2f} (epoch {results['best_epoch']}); "
            f"results in {run_dir / 'results.json'}"
        )
    logger.close()
    return results
