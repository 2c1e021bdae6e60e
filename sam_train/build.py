"""The one factory from a checked config to the objects of a run.

Training, ``sam-analyze`` and ``scripts/bench`` build through these functions, so what a
benchmark measures and what an analysis loads is what training runs. Only this module and
the entry points read the config; everything they build is plain torch, timm or sam_train
objects that take no config.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm.data
import timm.layers
import timm.loss
import timm.optim
import timm.scheduler
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from sam_train import callbacks as cb
from sam_train.checkpoint import MODEL, load_checkpoint, load_model_state, saved_config
from sam_train.config import SAM_VARIANT_OPTIONS, mixes, per_device_batch
from sam_train.config.schema import (
    DEVICE_PATTERN,
    INDEXED_VARIANTS,
    RUN_LENGTH_VARIANTS,
    SEEDED_VARIANTS,
    SIZED_VARIANTS,
    TRAJECTORY_VARIANTS,
    best_metric_key,
    transform_options,
)
from sam_train.data import build_datasets, build_loaders
from sam_train.data.datasets import DatasetPair
from sam_train.data.loaders import Loaders
from sam_train.data.transforms import IMAGENET_NORMALIZATION, Normalization
from sam_train.errors import CheckpointError, ConfigError
from sam_train.hparams import curated_hparams
from sam_train.models import create_model
from sam_train.run import Run
from sam_train.sam import VARIANTS
from sam_train.sam.sharded import is_sharded
from sam_train.step import Precision, SAMStep
from sam_train.step.trajectory import TrajectoryLoss
from sam_train.strategy import DDPStrategy, FSDPStrategy, SingleProcess, Strategy, process_group
from sam_train.strategy.cpu_threads import set_cpu_threads
from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")


# ---------------------------------------------------------------------------- device, processes
def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a name torch does not know, or an explicit CUDA request
    without a GPU, is a ConfigError (sam-eval's, sam-analyze's and the benchmarks' ``--device``
    reach here unchecked by the config's validator)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"device {name!r} is not one of {DEVICE_PATTERN[1]}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available; use trainer.device=cpu"
        )
    return device


def build_strategy(
    device_name: str, kind: str = "ddp", *, fsdp_wrap: list[str] | None = None
) -> Strategy:
    """The strategy the environment asks for: ``kind`` (ddp or fsdp) under torchrun or srun,
    else one process."""
    device = resolve_device(device_name)
    info = process_group.init_distributed(device.type)
    if not info.enabled:
        return SingleProcess(info, device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    if kind == "fsdp":
        wrap = None if fsdp_wrap is None else list(fsdp_wrap)
        return FSDPStrategy(info, device, wrap_classes=wrap)
    return DDPStrategy(info, device)


def run_strategy(cfg: DictConfig) -> Strategy:
    """:func:`build_strategy` as ``cfg.trainer`` asks; on the CPU, torch's thread count."""
    trainer = cfg.trainer
    strategy = build_strategy(trainer.device, trainer.strategy, fsdp_wrap=trainer.fsdp_wrap)
    if strategy.device.type == "cpu":
        set_cpu_threads(trainer.cpu_threads)
    return strategy


def build_precision(amp: str, device: torch.device, *, training: bool = True) -> Precision:
    """``trainer.amp`` as the one Precision of a run (step, FSDP, evaluation, EMA); fp16
    training gets its GradScaler, evaluation none."""
    scaler = torch.amp.GradScaler(device.type) if amp == "fp16" and training else None
    if scaler is not None and device.type == "cpu":  # allowed: it proves the fp16 path on CPU
        log.warning(
            "trainer.amp=fp16 on a CPU: float16 is emulated there and trains many times slower "
            "than fp32; use trainer.amp=bf16 or trainer.amp=none for a CPU run"
        )
    return Precision(amp, device, scaler)


# ---------------------------------------------------------------------------- data
def build_data(cfg: DictConfig, strategy: Strategy | None = None) -> DatasetPair:
    """The train and test sets (the same split and noisy labels for the same seed).

    Rank 0 downloads while the others wait, then read what it wrote.
    """
    strategy = strategy or SingleProcess()
    node = cfg.dataset

    def make(download: bool) -> DatasetPair:
        return build_datasets(
            node.name,
            root=node.root,
            num_classes=node.num_classes,
            image_size=node.image_size,
            download=download,
            verify_checksums=node.verify_checksums,
            label_noise=node.label_noise,
            test_fraction=node.test_fraction,
            seed=cfg.seed,
            augment=cfg.augment.name,
            cutout_size=cfg.augment.cutout_size,
            verify=node.verify,
            transform_options=transform_options(cfg.augment),
            normalization=model_normalization(cfg.model),
        )

    data = make(node.download) if strategy.is_main else None
    strategy.barrier()
    return data if data is not None else make(False)


def model_normalization(model_cfg: DictConfig) -> Normalization:
    """The mean and std the pretrained weights were trained with (timm's ``pretrained_cfg``,
    what its ``resolve_data_config`` uses): 0.5 for vision_transformer's ViTs, ImageNet's for
    most others. ImageNet's for a model trained here from scratch or from ``model.init_from``."""
    if not model_cfg.pretrained or not timm.models.is_model_pretrained(model_cfg.name):
        return IMAGENET_NORMALIZATION
    pretrained = timm.models.get_pretrained_cfg(model_cfg.name)
    if pretrained is None or pretrained.mean is None or pretrained.std is None:
        return IMAGENET_NORMALIZATION
    return Normalization(tuple(pretrained.mean), tuple(pretrained.std))


def build_run_loaders(
    cfg: DictConfig, data: DatasetPair, strategy: Strategy, batch: int, seed: int | None = None
) -> Loaders:
    """Loaders for this process: ``batch`` examples per training step."""
    return build_loaders(
        data.train,
        data.test,
        batch_size=batch,
        eval_batch_size=cfg.trainer.eval_batch_size,
        num_workers=cfg.trainer.num_workers,
        seed=cfg.seed if seed is None else seed,
        pin_memory=strategy.device.type == "cuda",
        rank=strategy.rank,
        world_size=strategy.world_size,
        kind=cfg.dataset.loader,
        device=strategy.device,
        host_rngs=bool(transform_options(cfg.augment)),  # timm's transforms draw from them
        with_indices=cfg.sam.name in INDEXED_VARIANTS,
    )


# ---------------------------------------------------------------------------- model, optimizer
def build_model(cfg: DictConfig, num_classes: int, strategy: Strategy) -> nn.Module:
    """timm's model (SyncBatchNorm across processes), on the device, in its memory format."""
    model = create_model(
        cfg.model.name,
        num_classes=num_classes,
        in_chans=cfg.dataset.in_chans,
        pretrained=cfg.model.pretrained,
        **cfg.model.kwargs,
    )
    if cfg.model.sync_bn and strategy.distributed:
        if strategy.device.type == "cpu":
            raise ConfigError(
                "model.sync_bn=true needs GPUs: torch's SyncBatchNorm has no CPU kernel"
            )
        model = timm.layers.convert_sync_batchnorm(model)
    if cfg.model.grad_checkpointing:
        enable_grad_checkpointing(model, cfg.model.name)
    model = model.to(strategy.device)
    if cfg.trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def enable_grad_checkpointing(model: nn.Module, name: str) -> None:
    """timm's ``set_grad_checkpointing``: blocks recompute their forward during backward.

    Refused for models with running statistics (BatchNorm): the recomputed forward runs in
    training mode and would update them a second time per pass. ViTs have none. Dropout
    draws are the same in the recomputation (torch.utils.checkpoint restores the RNG).
    """
    if any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules()):
        raise ConfigError(
            f"model.grad_checkpointing=true: {name} has BatchNorm layers, whose running "
            "statistics the recomputed forward would update twice; set it to false"
        )
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, AssertionError, NotImplementedError) as err:
        raise ConfigError(
            f"model.grad_checkpointing=true: {name} does not support it (timm's "
            "set_grad_checkpointing); set model.grad_checkpointing=false"
        ) from err


def initial_weights(model: nn.Module, cfg: DictConfig) -> None:
    """``model.init_from``: the starting weights of a new run (a fine-tune), in place."""
    from sam_train.models.init_weights import init_model_weights

    init_model_weights(
        model, cfg.model.init_from, strict=cfg.model.init_strict, use_ema=cfg.model.init_ema
    )


def optimizer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Arguments for ``timm.optim.create_optimizer_v2``."""
    kwargs: dict[str, Any] = {
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "filter_bias_and_bn": cfg.filter_bias_and_bn,
    }
    if cfg.layer_decay is not None:
        kwargs["layer_decay"] = cfg.layer_decay
    if cfg.name == "sgd":  # timm: "sgd" is Nesterov SGD, "momentum" is plain momentum SGD
        kwargs.update(opt="sgd" if cfg.nesterov else "momentum", momentum=cfg.momentum)
    else:
        kwargs.update(opt=cfg.name, betas=tuple(cfg.betas), eps=cfg.eps)
    # The fused kernels take a non-finite step's found_inf flag on the device (no masked copy)
    fused = cfg.get("fused") if cfg.get("fused") is not None else cfg.name == "sgd"
    kwargs["fused"] = fused and not cfg.get("foreach")
    if cfg.get("foreach") is not None:
        kwargs["foreach"] = cfg.foreach
    return kwargs


def sam_kwargs(
    cfg: DictConfig,
    lr_min: float = 0.0,
    total_steps: int | None = None,
    seed: int = 0,
    steps_per_epoch: int = 1,
) -> dict[str, Any]:
    """Arguments of the ``sam.name`` variant's class; unset variant options keep its defaults.

    ``lr_min`` is the schedule's floor, which GSAM's rho schedule needs; ``total_steps`` the
    run's length in optimizer steps (AE-SAM's threshold schedule, RST's p_t); ``seed`` the
    run's seed (RST's trials, ESAM's perturbed tensors: the same on every replica);
    ``steps_per_epoch`` turns MESA's ``start_epoch`` into its first step.
    """
    kwargs: dict[str, Any] = {
        key: cfg[key]
        for key in ("rho", "adaptive", "eta", "p", "perturb_fraction", "include_weight_decay")
    }
    kwargs["inner_steps"] = cfg.inner_steps
    for key, variants in SAM_VARIANT_OPTIONS.items():
        if cfg.name in variants and cfg[key] is not None:
            kwargs[key] = cfg[key]
    if cfg.name == "gsam":
        kwargs["lr_min"] = lr_min
    if cfg.name in RUN_LENGTH_VARIANTS:
        kwargs["total_steps"] = total_steps
    if cfg.name in SEEDED_VARIANTS or cfg.perturb_fraction < 1:  # ESAM's draws too
        kwargs["seed"] = seed
    if cfg.name == "mesa" and "start_epoch" in kwargs:
        kwargs["start_step"] = kwargs.pop("start_epoch") * steps_per_epoch
    if cfg.name == "saf":
        kwargs["steps_per_epoch"] = steps_per_epoch
    return kwargs


def build_optimizer(
    model: nn.Module,
    opt_cfg: DictConfig,
    sam_cfg: DictConfig,
    lr_min: float = 0.0,
    *,
    total_steps: int | None = None,
    seed: int = 0,
    steps_per_epoch: int = 1,
    num_examples: int = 1,
) -> Optimizer:
    """timm's optimizer (its weight-decay grouping), wrapped in the SAM variant ``sam.name``
    unless ``sam=none``. With ``layer_decay`` each group has an ``lr_scale`` that timm's
    scheduler applies; SAM shares the groups and takes one norm over all of them."""
    if opt_cfg.layer_decay is not None and not hasattr(model, "group_matcher"):
        raise ConfigError(
            f"optimizer.layer_decay needs a model with timm's group_matcher (ViTs, ConvNeXts, "
            f"...); {type(model).__name__} has none: set optimizer.layer_decay=null"
        )
    kwargs = optimizer_kwargs(opt_cfg)
    if any(is_sharded(p) for p in model.parameters()):
        kwargs["fused"] = False  # torch's fused kernels have no rule for FSDP's DTensors
    base = timm.optim.create_optimizer_v2(model, **kwargs)
    if sam_cfg.name == "none":
        return base
    kwargs = sam_kwargs(sam_cfg, lr_min, total_steps, seed, steps_per_epoch)
    if sam_cfg.name == "mesa":
        kwargs["model"] = model  # the EMA follows its weights
    if sam_cfg.name in SIZED_VARIANTS:
        kwargs["num_examples"] = num_examples  # SAF's store's rows, bSAM's N
    if sam_cfg.adaptive and sam_cfg.adaptive_params == "weights":
        kwargs["unscaled_params"] = [p for n, p in model.named_parameters() if "weight" not in n]
    return VARIANTS[sam_cfg.name].wrap(base, **kwargs)


def scheduler_kwargs(cfg: DictConfig, epochs: int, updates_per_epoch: int) -> dict[str, Any]:
    """Arguments for ``timm.scheduler.create_scheduler_v2``, stepping per update."""
    return {
        "sched": cfg.name,
        "num_epochs": epochs,
        "decay_milestones": list(cfg.milestones),
        "decay_rate": cfg.decay_rate,
        "min_lr": cfg.min_lr,
        "warmup_lr": cfg.warmup_lr,
        "warmup_epochs": cfg.warmup_epochs,
        "step_on_epochs": False,
        "updates_per_epoch": updates_per_epoch,
    }


def build_scheduler(optimizer: Optimizer, cfg: DictConfig, epochs: int, updates_per_epoch: int):
    """timm's scheduler on the base optimizer's param groups (SAM shares the same list)."""
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, **scheduler_kwargs(cfg, epochs, updates_per_epoch)
    )
    return scheduler


def build_mixup(cfg: DictConfig) -> timm.data.Mixup | None:
    """timm's Mixup/CutMix over whole batches, with the label smoothing folded into its soft
    targets (as timm's train.py does), or None when both alphas are 0."""
    if not mixes(cfg):
        return None
    augment = cfg.augment
    return timm.data.Mixup(
        mixup_alpha=augment.mixup_alpha,
        cutmix_alpha=augment.cutmix_alpha,
        prob=augment.mix_prob,
        switch_prob=augment.switch_prob,
        label_smoothing=cfg.trainer.label_smoothing,
        num_classes=cfg.dataset.num_classes,
    )


def build_step(
    cfg: DictConfig,
    model: nn.Module,
    optimizer: Optimizer,
    strategy: Strategy,
    precision: Precision | None = None,
) -> SAMStep:
    """The SAM step with the run's precision, clipping, accumulation and m-sharpness;
    with Mixup/CutMix, one mixing per batch and timm's soft-target loss."""
    device = strategy.device
    precision = precision or build_precision(cfg.trainer.amp, device)
    mixup = build_mixup(cfg)
    criterion = (
        timm.loss.SoftTargetCrossEntropy()
        if mixup is not None
        else nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    )
    if cfg.sam.name in TRAJECTORY_VARIANTS:  # the KL term towards the variant's references
        criterion = TrajectoryLoss(criterion, optimizer)
    return SAMStep(
        model,
        optimizer,
        criterion,
        device,
        strategy=strategy,
        precision=precision,
        clip_grad_norm=cfg.trainer.clip_grad_norm,
        accum_steps=cfg.trainer.accum_steps,
        # FSDP reduce-scatters every backward: eps comes from the global gradient
        sync_perturbation=cfg.sam.sync_perturbation or isinstance(strategy, FSDPStrategy),
        sam_chunk=cfg.sam.m,
        channels_last=cfg.trainer.channels_last,
        skip_nonfinite=cfg.trainer.skip_nonfinite,
        max_bad_steps=cfg.trainer.max_bad_steps,
        check_every=None,  # the trainer reads the counts at its logging interval
        mix=mixup,
    )


# ---------------------------------------------------------------------------- the whole run
def build_run(
    cfg: DictConfig, strategy: Strategy | None = None, *, init_weights: bool = True
) -> Run:
    """Data, model, optimizer, scheduler and step of a training run, for this process.

    ``init_weights``: load ``model.init_from`` (off when a resume loads its own weights)."""
    strategy = strategy or run_strategy(cfg)
    if cfg.sam.name in INDEXED_VARIANTS and strategy.world_size > 1:
        raise ConfigError(f"sam={cfg.sam.name} keeps every example's outputs in one process")
    batch = per_device_batch(cfg, strategy.world_size)
    data = build_data(cfg, strategy)
    loaders = build_run_loaders(cfg, data, strategy, batch)
    steps_per_epoch = len(loaders.train)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} exceeds the {len(data.train)} "
            "training images: no full batch"
        )
    model = build_model(cfg, data.num_classes, strategy)
    if init_weights and cfg.model.init_from is not None:
        initial_weights(model, cfg)
    precision = build_precision(cfg.trainer.amp, strategy.device)
    model = strategy.shard(model, precision)  # FSDP: in place, before the optimizer is built
    optimizer = build_optimizer(
        model,
        cfg.optimizer,
        cfg.sam,
        lr_min=cfg.scheduler.min_lr,
        total_steps=cfg.trainer.epochs * steps_per_epoch,
        seed=cfg.seed,
        steps_per_epoch=steps_per_epoch,
        num_examples=len(data.train),
    )
    scheduler = build_scheduler(optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch)
    # torch.compile inside DDP: the graphs hold no collective, and no_sync() and DDP's
    # gradient hooks stay in eager code, for both SAM passes.
    train_model = torch.compile(model) if cfg.trainer.compile else model
    train_model = strategy.wrap(train_model)
    return Run(
        model=model,
        train_model=train_model,
        optimizer=optimizer,
        scheduler=scheduler,
        step=build_step(cfg, train_model, optimizer, strategy, precision),
        strategy=strategy,
        data=data,
        loaders=loaders,
        device=strategy.device,
        epochs=cfg.trainer.epochs,
        steps_per_epoch=steps_per_epoch,
        per_device_batch=batch,
    )


def config_from_checkpoint(checkpoint: dict[str, Any], path: str) -> DictConfig:
    """A checkpoint's resolved config on today's schema: options added since it was written
    take their defaults, so an older run still rebuilds."""
    from omegaconf.errors import OmegaConfBaseException

    from sam_train.config import TrainConfig

    config = saved_config(checkpoint)
    if config is None:
        raise CheckpointError(f"checkpoint {path} holds no config to rebuild its run from")
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.model.kwargs, False)
    try:
        return OmegaConf.merge(schema, config)
    except OmegaConfBaseException as err:
        raise CheckpointError(f"the config in {path} does not fit this sam-train: {err}") from err


def model_from_checkpoint(
    path: str | Path, strategy: Strategy | None = None, overrides: Sequence[str] = ()
) -> tuple[nn.Module, DictConfig, dict[str, Any]]:
    """(model with the checkpoint's weights, its config, the checkpoint): rebuilt by this
    factory from the config it holds, with ``overrides`` ("key=value") applied on top."""
    strategy = strategy or SingleProcess()
    state = load_checkpoint(path, map_location=strategy.device)
    if not isinstance(state.get(MODEL), dict):
        raise CheckpointError(f"checkpoint {path} has no model weights")
    cfg = config_from_checkpoint(state, str(path))
    cfg.model.pretrained = False  # the checkpoint's weights replace both (and a fine-tune's
    cfg.model.init_from = None  # starting file may be gone)
    cfg.model.init_ema = False
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    model = build_model(cfg, cfg.dataset.num_classes, strategy)
    load_model_state(model, state[MODEL], Path(path))  # names the keys that do not fit
    return model, cfg, state


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """``key=value`` overrides on a rebuilt config, checked like the CLI's."""
    from omegaconf.errors import OmegaConfBaseException

    from sam_train.config import validate

    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
    try:
        merged = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as err:
        raise ConfigError(f"bad override: {str(err).splitlines()[0]}") from err
    validate(merged)
    return merged


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"a.b": value}``."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat


# ---------------------------------------------------------------------------- callbacks
#: logger name (configs/logger/, schema.LOGGER_PACKAGES) -> its callback class.
LOGGERS: dict[str, type[cb.MetricLogger]] = {
    "tensorboard": cb.TensorBoard,
    "csv": cb.CSVLogger,
    "wandb": cb.WandbLogger,
    "mlflow": cb.MLflowLogger,
}


def build_loggers(
    cfg: DictConfig, run_dir: Path, overrides: Sequence[str] = ()
) -> list[cb.MetricLogger]:
    """A callback per chosen logger, each given the curated hyper-parameters (the overridden
    keys first) and the whole flattened config."""
    flat = flat_config(cfg)
    hparams = curated_hparams(flat, overrides)
    loggers: list[cb.MetricLogger] = []
    for name, logger in LOGGERS.items():
        options = cfg.logger[name]
        if options is None:
            continue
        kwargs = OmegaConf.to_container(options, resolve=True)
        if name == "tensorboard":
            kwargs = {"log_hparams": kwargs["hparams"]}
        loggers.append(logger(run_dir, hparams, flat, **kwargs))
    return loggers


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
            keep_best=checkpoint.keep_best,
        ),
    ]
    rho = cfg.sam.rho if cfg.sam.name != "none" else 0.0
    callbacks.append(cb.Results(run_dir, {"sam": cfg.sam.name, "rho": rho, "seed": cfg.seed}))
    return callbacks


def describe_perturbation(cfg: DictConfig, run: Run) -> str:
    """Where SAM's eps comes from when several processes train."""
    if isinstance(run.strategy, FSDPStrategy):
        return "one eps from the reduce-scattered global gradient (FSDP: sync implied)"
    if not cfg.sam.sync_perturbation:
        return f"one eps per {cfg.sam.m or run.per_device_batch} examples (m-sharpness)"
    return "one eps from the all-reduced first gradient (sam.sync_perturbation)"


def build_trainer(cfg: DictConfig, run: Run, callbacks: Sequence[cb.Callback]) -> Trainer:
    """The trainer over a built run, ranking epochs by ``checkpoint.best_metric``."""
    metric = best_metric_key(cfg.checkpoint.best_metric)
    return Trainer(run, callbacks, best_metric=metric, log_every=cfg.trainer.log_every)


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
