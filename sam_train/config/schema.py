"""The config schema: dataclasses whose field metadata declares every choice list and range.

Each checked field is made with :func:`checked` (or ``field(metadata=checks(...))``);
``validate.check_fields`` walks the schema and applies the declared checks, so a list of names
or a range is written here and nowhere else.
Torch-free: it is read before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

#: The checks a field's metadata may declare (read by ``validate.check_fields``).
#: choices: allowed values; ge/gt/le/lt: bounds (finite numbers); pattern: (regex, what it
#: reads as); items: checks of each list element; length: list length; increasing: strictly
#: increasing list; variants: the SAM variants that read this option (None otherwise).
CHECK_KEYS = frozenset(
    {"choices", "ge", "gt", "le", "lt", "pattern", "items", "length", "increasing", "variants"}
)


def checks(**declared: Any) -> dict[str, Any]:
    """Field metadata for the generic validator; a misspelt check fails at import."""
    unknown = set(declared) - CHECK_KEYS
    if unknown:
        raise TypeError(f"unknown field checks {sorted(unknown)}; known: {sorted(CHECK_KEYS)}")
    return declared


def checked(default: Any = MISSING, **declared: Any) -> Any:
    """A dataclass field with a default and the checks the one generic validator applies."""
    return field(default=default, metadata=checks(**declared))


@dataclass(frozen=True)
class DataSpec:
    """What the validator must know of a data set before any of it is loaded."""

    channels: int
    images: int | None = None  # split here by dataset.test_fraction: the number of images
    classes: int | None = None  # ... and its classes (stratified: each split needs one of each)
    cifar: bool = False  # CIFAR's augmentations and the GPU loader apply
    pil: bool = False  # decoded to PIL images: timm's create_transform options apply


DATA_SPECS: dict[str, DataSpec] = {
    "digits": DataSpec(channels=1, images=1797, classes=10),  # scikit-learn's 8x8 digits
    "cifar10": DataSpec(channels=3, cifar=True, pil=True),
    "cifar100": DataSpec(channels=3, cifar=True, pil=True),
    "imagenet": DataSpec(channels=3, pil=True),  # ImageFolder loads RGB
    # The SAM paper's Table 3 fine-tuning sets, through torchvision's classes (RGB, PIL)
    "food101": DataSpec(channels=3, pil=True),
    "oxford_pets": DataSpec(channels=3, pil=True),
    "flowers102": DataSpec(channels=3, pil=True),
    "stanford_cars": DataSpec(channels=3, pil=True),
    "fgvc_aircraft": DataSpec(channels=3, pil=True),
}
DATASETS = tuple(DATA_SPECS)
CIFAR_DATASETS = tuple(name for name, spec in DATA_SPECS.items() if spec.cifar)
GPU_LOADER_DATASETS = CIFAR_DATASETS
# CIFAR's own resolution: dataset.image_size other than this upsamples (fine-tuning a model
# pretrained at that size), which the 32 px augmentations and the GPU loader do not do.
# data/constants.py's, kept here so the validator loads no torch (tests/test_imports.py)
CIFAR_IMAGE_SIZE = 32
OPTIMIZERS = ("sgd", "adamw")
# timm's scheduler names; poly with power 1 is configs/scheduler/linear.yaml
SCHEDULERS = ("cosine", "multistep", "poly")
PRECISIONS = ("none", "bf16", "fp16")
# checkpoint.best_metric: the live model's test metrics, or the EMA's (ema.decay set).
BEST_METRICS = (
    "test/acc1",
    "test/acc5",
    "test/loss",
    "test_ema/acc1",
    "test_ema/acc5",
    "test_ema/loss",
)
AUGMENTATIONS = ("basic", "cutout", "autoaugment")  # CIFAR training pipelines (augment group)
GPU_LOADER_AUGMENTATIONS = ("basic",)  # the GPU loader implements crop + flip only
LOADERS = ("dataloader", "gpu")
STRATEGIES = ("ddp", "fsdp")  # under torchrun (sam_train/strategy/)
# augment.auto_augment: timm's policy strings (timm.data.auto_augment), and torchvision's
# TrivialAugmentWide under the name its classification references give it.
AUTO_AUGMENT = (
    r"rand(-(m\d+|n\d+|p[\d.]+|mstd[\d.]+|mmax\d+|inc[01]|t[a-z0-9]+))*"
    r"|augmix(-(m\d+|w\d+|d\d+|a[\d.]+|b[01]|mstd[\d.]+))*"
    r"|ta_wide|(original|originalr|v0|v0r|3a)(-mstd[\d.]+)?",
    "rand-m9-mstd0.5 (RandAugment), ta_wide (TrivialAugment), augmix-m3-w3 (AugMix), "
    "original, originalr, v0, v0r or 3a (timm's AutoAugment policies)",
)
ERASE_MODES = ("pixel", "const", "rand")  # timm's RandomErasing fills
# SAM variants (sam_train/sam/VARIANTS is keyed by these, "none" aside); which options each
# reads is the ``variants`` metadata of SAMConfig's fields.
SAM_VARIANTS = (
    "none",
    "sam",
    "gsam",
    "looksam",
    "interval",
    "fsam",
    "msam",
    "rst",
    "aesam",
    "wsam",
    "esam",
    "ksam",
    "mesa",
    "saf",
    "bsam",
)
# Variants that perturb along a stored direction, not from a gradient: SAM's ascent options
# (adaptive, p, perturb_fraction, inner_steps, include_weight_decay) do not apply.
NO_ASCENT_VARIANTS = ("msam", "mesa", "saf", "bsam")
# Variants that use the first gradient for the ascent only, so ESAM's stochastic weight
# perturbation (sam.perturb_fraction) may leave out the other tensors' (SAM.samples_weights).
WEIGHT_PERTURBATION_VARIANTS = ("sam", "esam", "ksam")
# Variants not yet tested under trainer.strategy=fsdp (refused there in one line).
FSDP_UNTESTED_VARIANTS = ("esam", "ksam", "mesa", "saf", "bsam")
# Variants whose loss gains a trajectory term (sam_train/step/trajectory.py).
TRAJECTORY_VARIANTS = ("mesa", "saf")
# Variants whose loader hands the step each example's index (one process only).
INDEXED_VARIANTS = ("saf",)
# Variants that need the training set's size (SAF's store, bSAM's posterior scale N).
SIZED_VARIANTS = ("saf", "bsam")
# Variants whose random draws are seeded by the run's seed (the same on every replica).
SEEDED_VARIANTS = ("rst", "bsam")
# Variants whose schedule spans the run's optimizer steps (build passes total_steps).
RUN_LENGTH_VARIANTS = ("aesam", "rst")
# RST's shapes of p_t from sam.probability to sam.probability_end over the run (the keys of
# sam_train/sam/rst.py's SCHEDULE_SHAPES; a test holds the two equal).
RST_SCHEDULES = ("constant", "linear", "cosine", "step")
# What a variant needs of the rest of the config (the validator refuses it otherwise), as the
# overrides that give it: for whoever composes every variant (the benchmark, the tests).
VARIANT_OVERRIDES: dict[str, tuple[str, ...]] = {
    "bsam": ("optimizer=sgd", "optimizer.momentum=0", "optimizer.weight_decay=0"),
}
# Variants whose passes run on part of the batch (sam_train/step/selection.py).
SELECTING_VARIANTS = ("esam", "ksam")
# ASAM's scaled parameters: every one (davda54/sam), or those named *weight* (official ASAM).
ADAPTIVE_PARAMS = ("all", "weights")
DEVICE_PATTERN = (r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N")
# Seeds are offset by rank and epoch and must stay within torch's 64-bit generator seed.
MAX_SEED = 2**63 - 1


@dataclass
class DatasetConfig:
    name: str = checked(choices=DATASETS)
    root: str = "data"
    num_classes: int = checked(gt=0)
    in_chans: int = checked(3, gt=0)  # must equal DATA_SPECS[name].channels
    image_size: int = checked(32, gt=0)
    download: bool = True
    verify_checksums: bool = True
    # ImageFolder: decode every image once before training and refuse the first bad one
    # (about one epoch of decoding). Off, a bad image stops training at its first read.
    verify: bool = False
    label_noise: float = checked(0.0, ge=0, le=1)
    test_fraction: float = checked(0.25, gt=0, lt=1)  # digits only: held-out share
    loader: str = checked("dataloader", choices=LOADERS)  # gpu: CIFAR kept on the device


@dataclass
class AugmentConfig:
    name: str = checked("basic", choices=AUGMENTATIONS)  # other than basic: CIFAR only
    cutout_size: int = checked(16, gt=0)
    # Mixup / CutMix (timm's Mixup, one mixing per batch, before both SAM passes): on when
    # an alpha is above 0; trainer.label_smoothing then goes into the soft targets.
    mixup_alpha: float = checked(0.0, ge=0)
    cutmix_alpha: float = checked(0.0, ge=0)
    mix_prob: float = checked(1.0, ge=0, le=1)  # share of batches mixed
    switch_prob: float = checked(0.5, ge=0, le=1)  # CutMix instead of Mixup, both alphas set
    # timm's create_transform stages after the crop and flip (CIFAR and ImageFolder data);
    # see transform_options. null / 0: off.
    auto_augment: str | None = checked(None, pattern=AUTO_AUGMENT)
    color_jitter: float | None = checked(None, ge=0)  # brightness, contrast and saturation
    reprob: float = checked(0.0, ge=0, le=1)  # random erasing, per image
    remode: str = checked("pixel", choices=ERASE_MODES)
    recount: int = checked(1, gt=0)  # erased boxes per image (at most)


@dataclass
class ModelConfig:
    name: str = MISSING  # any timm model name, or one registered in sam_train.models
    pretrained: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)  # timm.create_model's; left open
    sync_bn: bool = False  # SyncBatchNorm across processes (GPUs; timm's converter)
    # Fine-tuning: start from these weights (a sam-train checkpoint or a plain/timm state
    # dict, .pth or .safetensors); not a resume: the optimizer and schedule start fresh. A
    # classifier of another class count is re-initialised.
    init_from: str | None = None
    init_strict: bool = True  # false: load what fits, log the missing/unexpected/shape keys
    init_ema: bool = False  # take a sam-train checkpoint's EMA weights (callbacks.ModelEMA)
    grad_checkpointing: bool = False  # timm's set_grad_checkpointing (ViTs, ...): less memory


@dataclass
class OptimizerConfig:
    name: str = checked("sgd", choices=OPTIMIZERS)
    lr: float = checked(0.1, gt=0)
    weight_decay: float = checked(5e-4, ge=0)
    momentum: float = checked(0.9, ge=0)
    nesterov: bool = False
    betas: list[float] = field(
        default_factory=lambda: [0.9, 0.999],
        metadata=checks(length=2, items=checks(ge=0, lt=1)),
    )
    eps: float = checked(1e-8, ge=0)
    filter_bias_and_bn: bool = True  # no weight decay on biases and norm weights (timm's rule)
    # Layer-wise lr decay (timm's create_optimizer_v2 layer_decay; models with group_matcher,
    # e.g. ViTs): layer i of L gets lr * layer_decay ** (L - i). None: off.
    layer_decay: float | None = checked(None, gt=0, le=1)
    # torch's implementations: fused (one kernel; skips a non-finite step on the device for
    # free) or foreach (multi-tensor). None: fused for sgd, torch's default for adamw. Fused
    # and foreach differ in the last bits (6e-8 in the weights after 30 quickstart steps); a
    # resumed run keeps the kernel its checkpoint was written with.
    fused: bool | None = None
    foreach: bool | None = None


@dataclass
class SAMConfig:
    name: str = checked("sam", choices=SAM_VARIANTS)  # sam_train/sam/
    rho: float = checked(0.05, ge=0)
    adaptive: bool = False
    eta: float = checked(0.01, ge=0)
    # With adaptive: which parameters ASAM scales by |w| + eta (the rest by 1). configs/sam/
    # asam.yaml picks "weights", the official code's rule, under which its rho was tuned.
    adaptive_params: str = checked("all", choices=ADAPTIVE_PARAMS)
    # Under DDP each replica perturbs with its own gradient (the paper's m-sharpness with m =
    # per-device batch, one all-reduce per step); true all-reduces the first gradient too.
    sync_perturbation: bool = False
    m: int | None = checked(None, gt=0)  # m-sharpness: one perturbation per m examples/device
    # Options of every variant (sam_train/sam/sam.py); the defaults are the paper's SAM.
    p: float = checked(2.0, choices=(2.0, math.inf))  # eps = rho g/||g|| or rho sign(g)
    perturb_fraction: float = checked(1.0, gt=0, le=1)  # ESAM's stochastic perturbation
    include_weight_decay: bool = False  # weight_decay * w in the ascent gradient
    inner_steps: int = checked(1, gt=0)  # ascent steps, each one more forward-backward
    # Variant options (None: the variant's own default); set by configs/sam/<variant>.yaml.
    alpha: float | None = checked(None, ge=0, variants=("gsam", "looksam"))  # gap/reuse weight
    rho_min: float | None = checked(None, ge=0, variants=("gsam",))  # rho at scheduler.min_lr
    k: int | None = checked(None, gt=0, variants=("looksam", "interval"))  # SAM every k steps
    # looksam: g_v projected and rescaled per parameter tensor (public code) or over all weights
    per_tensor: bool | None = checked(None, variants=("looksam",))
    sigma: float | None = checked(None, ge=0, variants=("fsam",))  # EMA share removed
    # fsam: the gradient EMA's lambda; aesam: delta, the forgetting rate of ||g||^2's statistics
    # mesa: the EMA model's decay per step
    ema_decay: float | None = checked(None, ge=0, lt=1, variants=("fsam", "aesam", "mesa"))
    # rst: p_t, the chance of a SAM step, from probability (p_start) to probability_end
    # (p_end) over the run's optimizer steps, in the shape probability_schedule
    probability: float | None = checked(None, ge=0, le=1, variants=("rst",))
    probability_end: float | None = checked(None, ge=0, le=1, variants=("rst",))
    probability_schedule: str | None = checked(None, choices=RST_SCHEDULES, variants=("rst",))
    # aesam: SAM when ||g||^2 >= mean + c_t * std, c_t linear from start to end over the run
    threshold_start: float | None = checked(None, variants=("aesam",))
    threshold_end: float | None = checked(None, variants=("aesam",))
    # wsam: the sharpness weight is gamma / (1 - gamma); decouple: applied after the base step
    gamma: float | None = checked(None, ge=0, lt=1, variants=("wsam",))
    decouple: bool | None = checked(None, variants=("wsam",))
    # esam: gamma, the share of the batch in the second pass; ksam: k / batch, for both passes
    select_fraction: float | None = checked(None, gt=0, le=1, variants=("esam", "ksam"))
    # mesa, saf: lambda * T^2 * KL(reference / T || outputs / T) added to the loss from
    # start_epoch; the reference: an EMA model's outputs (mesa), or each example's own outputs
    # from past_epochs epochs earlier (saf)
    trajectory_weight: float | None = checked(None, ge=0, variants=("mesa", "saf"))
    temperature: float | None = checked(None, gt=0, variants=("mesa", "saf"))
    start_epoch: int | None = checked(None, ge=0, variants=("mesa", "saf"))
    past_epochs: int | None = checked(None, gt=0, variants=("saf",))
    # bsam: the prior precision delta, the damping gamma, the initial precision s
    prior_precision: float | None = checked(None, ge=0, variants=("bsam",))
    damping: float | None = checked(None, ge=0, variants=("bsam",))
    init_scale: float | None = checked(None, gt=0, variants=("bsam",))


@dataclass
class SchedulerConfig:
    name: str = checked("cosine", choices=SCHEDULERS)
    warmup_epochs: int = checked(0, ge=0)  # shortened to trainer.epochs - 1 by adjust()
    warmup_lr: float = checked(1e-5, ge=0)
    min_lr: float = checked(0.0, ge=0)  # at most optimizer.lr
    milestones: list[int] = field(
        default_factory=list, metadata=checks(increasing=True, items=checks(gt=0))
    )
    decay_rate: float = checked(0.1, gt=0, le=1)  # multistep: factor per milestone; poly: power


@dataclass
class TrainerConfig:
    epochs: int = checked(10, gt=0)
    batch_size: int = checked(128, gt=0)
    eval_batch_size: int = checked(256, gt=0)
    device: str = checked("auto", pattern=DEVICE_PATTERN)
    num_workers: int = checked(2, ge=0)
    # torch's threads on the CPU; None: this process's share of the free cores
    # (sam_train/strategy/cpu_threads.py), or OMP_NUM_THREADS when set
    cpu_threads: int | None = checked(None, gt=0)
    log_every: int = checked(50, gt=0)
    amp: str = checked("none", choices=PRECISIONS)
    clip_grad_norm: float | None = checked(None, gt=0)
    accum_steps: int = checked(1, gt=0)  # must divide trainer.batch_size
    label_smoothing: float = checked(0.0, ge=0, lt=1)
    channels_last: bool = False
    compile: bool = False
    # How torchrun's processes share the model: ddp (each holds all of it) or fsdp (FSDP2
    # shards parameters, gradients, optimizer state and SAM's backup); one process: neither.
    strategy: str = checked("ddp", choices=STRATEGIES)
    # fsdp: class names of the modules that become FSDP units (None: every *Block and
    # *Bottleneck, as timm's ViTs, ConvNeXts and ResNets name theirs; []: the root only).
    fsdp_wrap: list[str] | None = None
    skip_nonfinite: bool = True  # skip steps with a non-finite gradient (on the device)
    max_bad_steps: int = checked(10, gt=0)  # consecutive skipped steps that stop the run


@dataclass
class CheckpointConfig:
    save_last: bool = True
    save_best: bool = True
    best_metric: str = checked("test/acc1", choices=BEST_METRICS)  # loss: lower is better
    every_n_steps: int = checked(0, ge=0)  # also save mid-epoch every N steps (0: epoch ends)
    keep_last: int = checked(0, ge=0)  # step_*.pt snapshots kept besides last.pt
    keep_best: int = checked(0, ge=0)  # best_step_*.pt: the K best epochs by best_metric


@dataclass
class EMAConfig:
    """Model EMA (timm's ModelEmaV3), evaluated beside the live model each epoch."""

    decay: float | None = checked(None, ge=0, lt=1)  # null or 0: off; e.g. 0.9998
    # timm's warm-up: decay_t = min(decay, 1 - (1 + t) ** -warmup_power) at update t, so a
    # short run's EMA is not dominated by its first, random weights.
    warmup: bool = False
    warmup_power: float = checked(2 / 3, gt=0)  # timm: 2/3 for long runs, 3/4 for short


@dataclass
class TensorBoardLoggerConfig:
    hparams: bool = True  # the HParams tab: the overridden keys and a core set, final metrics


@dataclass
class CSVLoggerConfig:
    filename: str = "scalars.csv"  # every logged step's scalars (metrics.csv has the epochs)


@dataclass
class WandbLoggerConfig:
    project: str = "sam-train"
    entity: str | None = None
    mode: str | None = checked(None, choices=("online", "offline", "disabled"))  # None: $WANDB_MODE
    tags: list[str] = field(default_factory=list)


@dataclass
class MLflowLoggerConfig:
    tracking_uri: str | None = None  # None: a SQLite file in the run folder (mlflow.db)
    experiment: str = "sam-train"


#: logger name -> the package it needs (None: always installed) and the extra that installs it.
LOGGER_PACKAGES: dict[str, tuple[str | None, str | None]] = {
    "tensorboard": (None, None),
    "csv": (None, None),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
}


@dataclass
class LoggerConfig:
    """One optional node per logger (configs/logger/): null is off. ``logger=[tensorboard,csv]``
    picks several, ``logger=none`` none."""

    tensorboard: TensorBoardLoggerConfig | None = None
    csv: CSVLoggerConfig | None = None
    wandb: WandbLoggerConfig | None = None
    mlflow: MLflowLoggerConfig | None = None


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
    ema: EMAConfig = field(default_factory=EMAConfig)
    seed: int = checked(0, ge=0, le=MAX_SEED)
    resume: str | None = None  # None | auto | path to a checkpoint
    # A resume whose config changes the trajectory is refused unless this is false.
    resume_strict: bool = True
    run_name: str = "train"


def transform_options(augment: Any) -> dict[str, Any]:
    """The ``augment`` options set that timm's create_transform applies, by their config names
    (empty: today's torchvision v2 pipeline, unchanged)."""
    options: dict[str, Any] = {}
    if augment.auto_augment is not None:
        options["auto_augment"] = augment.auto_augment
    if augment.color_jitter is not None:
        options["color_jitter"] = augment.color_jitter
    if augment.reprob > 0:
        options.update(reprob=augment.reprob, remode=augment.remode, recount=augment.recount)
    return options


def best_metric_key(name: str) -> str:
    """``checkpoint.best_metric`` -> its key in ``RunState.test_metrics``: ``test/acc1`` ->
    ``acc1``, ``test_ema/acc1`` -> ``ema_acc1``."""
    split, metric = name.split("/")
    return metric if split == "test" else f"ema_{metric}"


#: option -> the variants that read it (build.sam_kwargs passes these to the variant's class).
SAM_VARIANT_OPTIONS: dict[str, tuple[str, ...]] = {
    f.name: f.metadata["variants"] for f in fields(SAMConfig) if "variants" in f.metadata
}


SCHEMA_NAME = "train_schema"  # configs/train.yaml names it first in its defaults


def register_configs() -> None:
    """Register the schema under the name ``configs/train.yaml`` puts first in its defaults.

    ``model.kwargs`` is left open (not struct) so any keyword of any timm model can be set as
    ``model.kwargs.drop_rate=0.1``, without Hydra's ``+`` prefix for new keys. Built once per
    process (Hydra deep-copies what it loads from the store): building it took 0.07 s, a
    quarter of each ``compose_config`` call, which the tests make hundreds of times.
    """
    register_resolvers()
    if f"{SCHEMA_NAME}.yaml" in ConfigStore.instance().repo:
        return
    schema = OmegaConf.structured(TrainConfig)
    OmegaConf.set_struct(schema.model.kwargs, False)
    ConfigStore.instance().store(name=SCHEMA_NAME, node=schema)


def register_resolvers() -> None:
    """The config's own interpolations (``${scale_lr:...}``, ``${dataset_channels:...}``), for
    Hydra and for tools that load a run's saved ``.hydra/config.yaml``."""
    if not OmegaConf.has_resolver("scale_lr"):
        OmegaConf.register_new_resolver("scale_lr", scale_lr)
    if not OmegaConf.has_resolver("dataset_channels"):
        OmegaConf.register_new_resolver("dataset_channels", dataset_channels)


LR_SCALING = ("linear", "sqrt")


def scale_lr(lr: float, base_batch_size: int, rule: str = "linear", *, _root_: Any) -> float:
    """``${scale_lr:LR,BASE}``: LR is given for a global batch of BASE; scale it to
    ``trainer.batch_size`` linearly (Goyal et al., 2017, for SGD), as the paper's ImageNet recipe
    needs when run with another batch than its 4096, or by the square root
    (``${scale_lr:LR,BASE,sqrt}``: timm's rule for the Adam family)."""
    if rule not in LR_SCALING:
        raise ValueError(f"scale_lr: rule {rule!r} is not one of {', '.join(LR_SCALING)}")
    ratio = _root_.trainer.batch_size / float(base_batch_size)
    return float(lr) * (math.sqrt(ratio) if rule == "sqrt" else ratio)


def dataset_channels(name: str) -> int:
    """``${dataset_channels:NAME}``: the data set's channel count from DATA_SPECS, so the
    dataset YAML files do not write it a second time (an unknown name: the validator's)."""
    spec = DATA_SPECS.get(name)
    return spec.channels if spec is not None else DatasetConfig.in_chans
