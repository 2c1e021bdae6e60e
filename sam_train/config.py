"""Config schemas: dataclasses registered in Hydra's ConfigStore.

``configs/train.yaml`` puts ``train_schema`` first in its defaults list, so every YAML file and
every command-line override is merged onto these typed nodes: a misspelt key or a value of the
wrong type fails at start-up. ``validate`` adds the checks a type cannot express (ranges,
names), each with one line that says what to change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from sam_train.errors import ConfigError

DATASETS = ("digits", "cifar10", "cifar100", "imagenet")
SAM_VARIANTS = ("none", "sam", "gsam", "looksam", "interval", "fsam")
# Options only some variants read (None in the schema: the variant's own default).
SAM_VARIANT_OPTIONS = {
    "alpha": ("gsam", "looksam"),
    "rho_min": ("gsam",),
    "k": ("looksam", "interval"),
    "sigma": ("fsam",),
    "ema_decay": ("fsam",),
}
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "multistep")
PRECISIONS = ("none", "bf16", "fp16")
BEST_METRICS = ("test/acc1", "test/acc5", "test/loss")
AUGMENTATIONS = ("basic", "cutout", "autoaugment")  # CIFAR training pipelines (augment group)
LOADERS = ("dataloader", "gpu")
GPU_LOADER_DATASETS = ("cifar10", "cifar100")


@dataclass
class DatasetConfig:
    name: str = MISSING
    root: str = "data"
    num_classes: int = MISSING
    in_chans: int = 3
    image_size: int = 32
    download: bool = True
    verify_checksums: bool = True
    label_noise: float = 0.0
    test_fraction: float = 0.25  # digits only: held-out share of the 1797 images
    loader: str = "dataloader"  # dataloader (trainer.num_workers processes) | gpu (on device)


@dataclass
class AugmentConfig:
    name: str = "basic"  # basic | cutout | autoaugment (CIFAR); other data sets: basic only
    cutout_size: int = 16


@dataclass
class ModelConfig:
    name: str = MISSING  # any timm model name, or one registered in sam_train.models
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    sync_bn: bool = False  # SyncBatchNorm across processes (GPUs; timm's converter)


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = False
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    filter_bias_and_bn: bool = True  # no weight decay on biases and norm weights (timm's rule)


@dataclass
class SAMConfig:
    name: str = "sam"  # none | sam | gsam | looksam | interval | fsam (sam_train/sam/)
    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01
    # Under DDP each replica perturbs with its own gradient (the paper's m-sharpness with m =
    # per-device batch, one all-reduce per step); true all-reduces the first gradient too.
    sync_perturbation: bool = False
    m: int | None = None  # m-sharpness: one perturbation per chunk of m examples per device
    # Options of every variant (sam_train/sam/sam.py); the defaults are the paper's SAM.
    p: float = 2.0  # 2 | inf: eps = rho * g / ||g|| or rho * sign(g)
    perturb_fraction: float = 1.0  # ESAM's stochastic weight perturbation, beta in (0, 1]
    include_weight_decay: bool = False  # weight_decay * w in the ascent gradient
    inner_steps: int = 1  # ascent steps, each after the first one more forward-backward
    # Variant options (SAM_VARIANT_OPTIONS); set by configs/sam/<variant>.yaml.
    alpha: float | None = None  # gsam: surrogate-gap weight; looksam: reused-direction weight
    rho_min: float | None = None  # gsam: rho at scheduler.min_lr
    k: int | None = None  # looksam, interval: SAM every k-th step
    sigma: float | None = None  # fsam: share of the gradient EMA removed from the ascent
    ema_decay: float | None = None  # fsam: the EMA's lambda


@dataclass
class SchedulerConfig:
    name: str = "cosine"
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    min_lr: float = 0.0
    milestones: list[int] = field(default_factory=list)
    decay_rate: float = 0.1


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_workers: int = 2
    log_every: int = 50
    amp: str = "none"  # none | bf16 | fp16
    clip_grad_norm: float | None = None
    accum_steps: int = 1
    label_smoothing: float = 0.0
    channels_last: bool = False
    compile: bool = False
    skip_nonfinite: bool = True  # skip steps with a non-finite gradient (one host sync a step)
    max_bad_steps: int = 10  # consecutive skipped steps that stop the run


@dataclass
class CheckpointConfig:
    save_last: bool = True
    save_best: bool = True
    best_metric: str = "test/acc1"  # test/acc1 | test/acc5 (higher is better) | test/loss
    every_n_steps: int = 0  # also save mid-epoch every N optimizer steps (0: epoch ends only)
    keep_last: int = 0  # keep this many step_*.pt snapshots besides last.pt (0: none)


@dataclass
class LoggerConfig:
    tensorboard: bool = True


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    sam: SAMConfig = field(default_factory=SAMConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    resume: str | None = None  # None | auto | path to a checkpoint
    run_name: str = "train"


def register_configs() -> None:
    """Register the schema under the name ``configs/train.yaml`` puts first in its defaults.

    ``model.kwargs`` is left open (not struct) so any keyword of any timm model can be set as
    ``model.kwargs.drop_rate=0.1``, without Hydra's ``+`` prefix for new keys.
    """
    register_resolvers()
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.model.kwargs, False)
    ConfigStore.instance().store(name="train_schema", node=schema)


def register_resolvers() -> None:
    """The config's own interpolations (``${scale_lr:...}``), for Hydra and for tools that
    load a run's saved ``.hydra/config.yaml``."""
    if not OmegaConf.has_resolver("scale_lr"):
        OmegaConf.register_new_resolver("scale_lr", scale_lr)


def scale_lr(lr: float, base_batch_size: int, *, _root_: Any) -> float:
    """``${scale_lr:LR,BASE}``: LR is given for a global batch of BASE; scale it linearly to
    ``trainer.batch_size`` (Goyal et al., 2017), as the paper's ImageNet recipe needs when run
    with another batch than its 4096."""
    return float(lr) * _root_.trainer.batch_size / float(base_batch_size)


def _one_of(value: str, allowed: tuple[str, ...], key: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def _positive(value: float, key: str, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (ok and math.isfinite(value)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key} must be {bound}, got {value}")


def validate(cfg: Any) -> None:
    """Check what the schema's types cannot; raise ConfigError naming the key to change."""
    _one_of(cfg.dataset.name, DATASETS, "dataset.name")
    _one_of(cfg.optimizer.name, OPTIMIZERS, "optimizer.name")
    _one_of(cfg.sam.name, SAM_VARIANTS, "sam.name")
    _one_of(cfg.scheduler.name, SCHEDULERS, "scheduler.name")
    _one_of(cfg.trainer.amp, PRECISIONS, "trainer.amp")
    _one_of(cfg.augment.name, AUGMENTATIONS, "augment.name")
    if cfg.augment.name != "basic" and cfg.dataset.name not in ("cifar10", "cifar100"):
        raise ConfigError(
            f"augment={cfg.augment.name} is for CIFAR; dataset={cfg.dataset.name} takes "
            "augment=basic"
        )
    _positive(cfg.augment.cutout_size, "augment.cutout_size")
    _one_of(cfg.dataset.loader, LOADERS, "dataset.loader")
    if cfg.dataset.loader == "gpu" and cfg.dataset.name not in GPU_LOADER_DATASETS:
        raise ConfigError(
            f"dataset.loader=gpu keeps CIFAR on the device; {cfg.dataset.name} needs "
            "dataset.loader=dataloader"
        )
    if not 0.0 <= cfg.dataset.label_noise <= 1.0:
        raise ConfigError(f"dataset.label_noise must be in [0, 1], got {cfg.dataset.label_noise}")
    if not 0.0 < cfg.dataset.test_fraction < 1.0:
        raise ConfigError(
            f"dataset.test_fraction must be in (0, 1), got {cfg.dataset.test_fraction}"
        )
    _validate_sam(cfg.sam, cfg.trainer.amp)
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _positive(cfg.optimizer.weight_decay, "optimizer.weight_decay", allow_zero=True)
    _positive(cfg.trainer.epochs, "trainer.epochs")
    _positive(cfg.trainer.batch_size, "trainer.batch_size")
    _positive(cfg.trainer.eval_batch_size, "trainer.eval_batch_size")
    _positive(cfg.trainer.log_every, "trainer.log_every")
    _positive(cfg.trainer.accum_steps, "trainer.accum_steps")
    _positive(cfg.trainer.num_workers, "trainer.num_workers", allow_zero=True)
    if not 0.0 <= cfg.trainer.label_smoothing < 1.0:
        raise ConfigError(
            f"trainer.label_smoothing must be in [0, 1), got {cfg.trainer.label_smoothing}"
        )
    _positive(cfg.trainer.max_bad_steps, "trainer.max_bad_steps")
    _positive(cfg.checkpoint.every_n_steps, "checkpoint.every_n_steps", allow_zero=True)
    _positive(cfg.checkpoint.keep_last, "checkpoint.keep_last", allow_zero=True)
    _one_of(cfg.checkpoint.best_metric, BEST_METRICS, "checkpoint.best_metric")
    if cfg.trainer.clip_grad_norm is not None:
        _positive(cfg.trainer.clip_grad_norm, "trainer.clip_grad_norm")
    if cfg.sam.m is not None:
        _positive(cfg.sam.m, "sam.m")
        if cfg.sam.name not in ("sam", "none"):
            raise ConfigError(
                f"sam.m (m-sharpness) works with sam=sam or sam=asam, not {cfg.sam.name}"
            )
        if cfg.sam.sync_perturbation:
            raise ConfigError(
                "sam.m gives each chunk of m examples its own perturbation; it cannot be "
                "combined with sam.sync_perturbation=true (one global perturbation)"
            )
    if cfg.trainer.batch_size % cfg.trainer.accum_steps:
        raise ConfigError(
            f"trainer.batch_size={cfg.trainer.batch_size} must be divisible by "
            f"trainer.accum_steps={cfg.trainer.accum_steps}"
        )
    if cfg.scheduler.warmup_epochs >= cfg.trainer.epochs and cfg.scheduler.warmup_epochs > 0:
        raise ConfigError(
            f"scheduler.warmup_epochs={cfg.scheduler.warmup_epochs} must be below "
            f"trainer.epochs={cfg.trainer.epochs}"
        )


def _validate_sam(sam: Any, amp: str) -> None:
    """The SAM options: ranges, and the ones the chosen variant does not read."""
    _positive(sam.rho, "sam.rho", allow_zero=True)
    _positive(sam.eta, "sam.eta", allow_zero=True)
    if sam.name == "none":
        return
    if not (sam.p == 2 or sam.p == math.inf):
        raise ConfigError(f"sam.p must be 2 or inf, got {sam.p}")
    if not 0.0 < sam.perturb_fraction <= 1.0:
        raise ConfigError(f"sam.perturb_fraction must be in (0, 1], got {sam.perturb_fraction}")
    _positive(sam.inner_steps, "sam.inner_steps")
    for key, variants in SAM_VARIANT_OPTIONS.items():
        if sam[key] is not None and sam.name not in variants:
            raise ConfigError(
                f"sam.{key} applies to sam={' or sam='.join(variants)}, not sam={sam.name}"
            )
    if sam.alpha is not None:
        _positive(sam.alpha, "sam.alpha", allow_zero=True)
    if sam.k is not None:
        _positive(sam.k, "sam.k")
    if sam.sigma is not None:
        _positive(sam.sigma, "sam.sigma", allow_zero=True)
    if sam.rho_min is not None and not 0.0 <= sam.rho_min <= sam.rho:
        raise ConfigError(f"sam.rho_min must be in [0, sam.rho={sam.rho}], got {sam.rho_min}")
    if sam.ema_decay is not None and not 0.0 <= sam.ema_decay < 1.0:
        raise ConfigError(f"sam.ema_decay must be in [0, 1), got {sam.ema_decay}")
    if sam.name == "fsam" and sam.inner_steps != 1:
        raise ConfigError("sam=fsam takes one ascent step: set sam.inner_steps=1")
    # fp16 gradients carry the loss scale: fine for a normalised direction, wrong when they
    # are mixed with unscaled terms (weight decay) or with gradients of other scales (EMA).
    if amp == "fp16" and sam.name == "fsam":
        raise ConfigError("sam=fsam needs unscaled gradients for its EMA: use trainer.amp=bf16")
    if amp == "fp16" and sam.include_weight_decay:
        raise ConfigError(
            "sam.include_weight_decay=true needs unscaled gradients: use trainer.amp=bf16"
        )
