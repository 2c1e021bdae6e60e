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
SAM_VARIANTS = ("none", "sam")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULERS = ("cosine", "multistep")
PRECISIONS = ("none", "bf16", "fp16")
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
class ModelConfig:
    name: str = MISSING  # any timm model name, or one registered in sam_train.models
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model


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
    name: str = "sam"
    rho: float = 0.05
    adaptive: bool = False
    eta: float = 0.01


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


@dataclass
class CheckpointConfig:
    save_last: bool = True
    save_best: bool = True
    best_metric: str = "test/acc1"


@dataclass
class LoggerConfig:
    tensorboard: bool = True


@dataclass
class TrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
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
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.model.kwargs, False)
    ConfigStore.instance().store(name="train_schema", node=schema)


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
    _positive(cfg.sam.rho, "sam.rho", allow_zero=True)
    _positive(cfg.sam.eta, "sam.eta", allow_zero=True)
    _positive(cfg.optimizer.lr, "optimizer.lr")
    _positive(cfg.optimizer.weight_decay, "optimizer.weight_decay", allow_zero=True)
    _positive(cfg.trainer.epochs, "trainer.epochs")
    _positive(cfg.trainer.batch_size, "trainer.batch_size")
    _positive(cfg.trainer.eval_batch_size, "trainer.eval_batch_size")
    _positive(cfg.trainer.log_every, "trainer.log_every")
    _positive(cfg.trainer.accum_steps, "trainer.accum_steps")
    _positive(cfg.trainer.num_workers, "trainer.num_workers", allow_zero=True)
    _positive(cfg.trainer.label_smoothing, "trainer.label_smoothing", allow_zero=True)
    if cfg.trainer.clip_grad_norm is not None:
        _positive(cfg.trainer.clip_grad_norm, "trainer.clip_grad_norm")
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
