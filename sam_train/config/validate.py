"""Config checks: unknown keys, one generic pass over the schema's field metadata, then the
few rules that relate several fields. Torch-free, so a bad value fails in seconds.

Every failure is a :class:`~sam_train.errors.ConfigError` of one line naming the key.
"""

from __future__ import annotations

import importlib.util
import itertools
import math
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import fields, is_dataclass
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_type_hints

from omegaconf import OmegaConf, read_write

from sam_train.config.schema import (
    CIFAR_DATASETS,
    CIFAR_IMAGE_SIZE,
    DATA_SPECS,
    FSDP_UNTESTED_VARIANTS,
    GPU_LOADER_AUGMENTATIONS,
    INDEXED_VARIANTS,
    LOGGER_PACKAGES,
    NO_ASCENT_VARIANTS,
    RST_SCHEDULES,
    SAM_VARIANT_OPTIONS,
    SELECTING_VARIANTS,
    TRAJECTORY_VARIANTS,
    WEIGHT_PERTURBATION_VARIANTS,
    LoggerConfig,
    TrainConfig,
    transform_options,
)
from sam_train.errors import ConfigError, closest
from sam_train.paths import expect_file

_BRACKETS = {"ge": "[", "gt": "(", "le": "]", "lt": ")"}
_SYMBOLS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_OPS = {"ge": operator.ge, "gt": operator.gt, "le": operator.le, "lt": operator.lt}


def validate(cfg: Any) -> None:
    """Check a composed config against the schema and its cross-field rules; raise
    ConfigError naming the key to change."""
    check_known_keys(cfg, TrainConfig)
    check_fields(cfg, TrainConfig)
    for rule in (
        _dataset_rules,
        _sam_rules,
        _sam_sharpness_rules,
        _efficient_variant_rules,
        _optimization_rules,
        _fsdp_rules,
        _recipe_rules,
        _logger_rules,
        _init_rules,
        _resume_rules,
    ):
        rule(cfg)


def adjust(cfg: Any) -> list[str]:
    """Shorten settings that a short run cannot honour (a warm-up as long as the run, as when
    ``trainer.epochs=1`` overrides a preset or in a sweep); returns one warning line each.

    Call after :func:`validate`; changes ``cfg`` in place.
    """
    epochs, warmup = cfg.trainer.epochs, cfg.scheduler.warmup_epochs
    if warmup < epochs:
        return []
    with read_write(cfg):
        cfg.scheduler.warmup_epochs = epochs - 1
    return [
        f"scheduler.warmup_epochs={warmup} is not below trainer.epochs={epochs}: "
        f"shortened to {epochs - 1}"
    ]


def per_device_batch(cfg: Any, world_size: int) -> int:
    """The per-device batch, which accumulation and m-sharpness must divide. Torch-free: the
    CLI checks it before importing torch (a launch's workers with a batch that does not split
    stop at once), and build derives the batch from it."""
    batch = cfg.trainer.batch_size
    if batch % world_size:
        raise ConfigError(
            f"trainer.batch_size={batch} (global) must be divisible by the {world_size} processes"
        )
    per_device = batch // world_size
    where = f"the per-device batch {per_device} (trainer.batch_size={batch} over {world_size}"
    if per_device % cfg.trainer.accum_steps:
        raise ConfigError(f"trainer.accum_steps={cfg.trainer.accum_steps} must divide {where})")
    if cfg.sam.m is not None and cfg.sam.name != "none" and per_device % cfg.sam.m:
        raise ConfigError(f"sam.m={cfg.sam.m} must divide {where} processes)")
    if mixes(cfg) and per_device % 2:
        raise ConfigError(f"Mixup/CutMix pairs images: {where} processes) must be even")
    return per_device


def mixes(cfg: Any) -> bool:
    """Mixup or CutMix is on (either alpha above 0)."""
    return bool(cfg.augment.mixup_alpha or cfg.augment.cutmix_alpha)


@cache
def _nested(cls: type) -> dict[str, type]:
    """The fields of dataclass ``cls`` that are dataclasses themselves (config groups)."""
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if is_dataclass(hints[f.name])}


def check_known_keys(node: Any, cls: type, prefix: str = "") -> None:
    """Refuse keys the schema does not declare: Hydra's ``+group.key=value`` adds them to a
    struct node (force-add), where they would be silently ignored. ``model.kwargs`` is a dict
    field, not a dataclass, so it stays open."""
    known = [f.name for f in fields(cls)]
    for key in node:
        if key not in known:
            raise ConfigError(_unknown_key(prefix, str(key), known))
    for name, sub in _nested(cls).items():
        check_known_keys(node[name], sub, f"{prefix}{name}.")


def _unknown_key(prefix: str, key: str, known: list[str]) -> str:
    close = closest(key, known)
    if close:
        return f"unknown key {prefix}{key}; did you mean {prefix}{close}?"
    group = prefix.rstrip(".") or "the config"
    return f"unknown key {prefix}{key}; {group} takes: {', '.join(known)}"


def check_fields(node: Any, cls: type, prefix: str = "") -> None:
    """Apply every field's declared checks (``schema.checked``), group by group."""
    nested = _nested(cls)
    for f in fields(cls):
        key = f"{prefix}{f.name}"
        if f.name in nested:
            check_fields(node[f.name], nested[f.name], f"{key}.")
        elif f.metadata:
            if OmegaConf.is_missing(node, f.name):
                raise ConfigError(f"{key} is not set: choose a value (e.g. {key}=...)")
            check_value(key, node[f.name], f.metadata)


def check_value(key: str, value: Any, checks: Mapping[str, Any]) -> None:
    """One value against its checks; None (an unset optional) passes."""
    if value is None:
        return
    if "choices" in checks and value not in checks["choices"]:
        raise ConfigError(_not_one_of(key, value, checks["choices"]))
    if "pattern" in checks:
        regex, reads = checks["pattern"]
        if not re.fullmatch(regex, str(value)):
            raise ConfigError(f"{key}={value!r} is not one of: {reads}")
    if isinstance(value, Sequence) and not isinstance(value, str):
        _check_list(key, list(value), checks)
        return
    bounds = {op: checks[op] for op in _SYMBOLS if op in checks}
    if bounds and not (
        math.isfinite(value) and all(_OPS[op](value, b) for op, b in bounds.items())
    ):
        raise ConfigError(f"{key} must be {_describe(bounds)}, got {value}")


def _check_list(key: str, values: list[Any], checks: Mapping[str, Any]) -> None:
    if "length" in checks and len(values) != checks["length"]:
        raise ConfigError(f"{key} takes {checks['length']} values, got {values}")
    for i, item in enumerate(values):
        check_value(f"{key}[{i}]", item, checks.get("items", {}))
    if checks.get("increasing") and any(b <= a for a, b in itertools.pairwise(values)):
        raise ConfigError(f"{key} must be strictly increasing, got {values}")


def _describe(bounds: Mapping[str, float]) -> str:
    """``> 0``, ``>= 0`` or ``in [0, 1)``."""
    if len(bounds) == 1:
        ((op, bound),) = bounds.items()
        return f"{_SYMBOLS[op]} {_num(bound)}"
    (lo_op, lo), (hi_op, hi) = sorted(bounds.items(), key=lambda item: item[0][0] == "l")
    return f"in {_BRACKETS[lo_op]}{_num(lo)}, {_num(hi)}{_BRACKETS[hi_op]}"


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def _not_one_of(key: str, value: Any, choices: Sequence[Any]) -> str:
    if all(isinstance(c, str) for c in choices):
        near = closest(str(value), choices)
        hint = f"; did you mean {key}={near}?" if near else ""
        return f"{key}={value!r} is not one of: {', '.join(choices)}{hint}"
    return f"{key} must be {' or '.join(_num(c) for c in choices)}, got {value}"


# ------------------------------------------------------------------------ cross-field rules
def _logger_rules(cfg: Any) -> None:
    """Each chosen logger's options, and its package: a missing one is refused before any work
    (the extras that install it are in pyproject.toml)."""
    hints = get_type_hints(LoggerConfig)
    for name, (package, extra) in LOGGER_PACKAGES.items():
        node = cfg.logger[name]
        if node is None:
            continue
        options = next(arg for arg in get_args(hints[name]) if is_dataclass(arg))
        check_known_keys(node, options, f"logger.{name}.")
        check_fields(node, options, f"logger.{name}.")
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(
                f"logger={name} needs the {package} package, not installed here: run "
                f"`uv sync --extra {extra}` (or `pip install '.[{extra}]'` in the checkout)"
            )


def _dataset_rules(cfg: Any) -> None:
    """The data set against its options: augmentations, loader, channels, split sizes."""
    data, augment = cfg.dataset, cfg.augment.name
    spec = DATA_SPECS[data.name]
    if augment != "basic" and not spec.cifar:
        raise ConfigError(
            f"augment={augment} is for CIFAR; dataset={data.name} takes augment=basic"
        )
    if spec.cifar and data.image_size != CIFAR_IMAGE_SIZE:
        _upsampled_cifar_rules(data, augment)
    if data.loader == "gpu" and data.name not in CIFAR_DATASETS:
        raise ConfigError(
            f"dataset.loader=gpu keeps CIFAR on the device; {data.name} needs "
            "dataset.loader=dataloader"
        )
    if data.loader == "gpu" and augment not in GPU_LOADER_AUGMENTATIONS:
        raise ConfigError(
            f"dataset.loader=gpu implements random crop and flip only; augment={augment} "
            "needs dataset.loader=dataloader"
        )
    for key, value in transform_options(cfg.augment).items():
        if data.loader == "gpu":
            raise ConfigError(
                f"dataset.loader=gpu implements random crop and flip only; augment.{key}="
                f"{value} needs dataset.loader=dataloader"
            )
        if not spec.pil:
            raise ConfigError(
                f"augment.{key} is one of timm's transforms of PIL images (CIFAR, ImageFolder); "
                f"dataset={data.name} takes none"
            )
    if data.in_chans != spec.channels:
        raise ConfigError(
            f"dataset.in_chans={data.in_chans} but {data.name} images have {spec.channels} "
            f"channel{'s' if spec.channels > 1 else ''}: set dataset.in_chans={spec.channels}"
        )
    if spec.images is not None:
        _check_split(data.name, data.test_fraction, spec.images, spec.classes or 1)


def _upsampled_cifar_rules(data: Any, augment: str) -> None:
    """CIFAR at another size than its own is upsampled for a pretrained model (Table 3's
    fine-tuning): cutout, AutoAugment and the GPU loader's crop are 32 px operations."""
    where = f"dataset.image_size={data.image_size} upsamples {data.name}"
    if augment != "basic":
        raise ConfigError(
            f"augment={augment} works on CIFAR's own {CIFAR_IMAGE_SIZE} px images; {where}: "
            f"use augment=basic or dataset.image_size={CIFAR_IMAGE_SIZE}"
        )
    if data.loader == "gpu":
        raise ConfigError(
            f"dataset.loader=gpu crops and flips CIFAR at {CIFAR_IMAGE_SIZE} px; {where}: use "
            f"dataset.loader=dataloader or dataset.image_size={CIFAR_IMAGE_SIZE}"
        )


def _check_split(name: str, fraction: float, images: int, classes: int) -> None:
    """scikit-learn's stratified split: ceil(fraction * images) test images, the rest for
    training, each at least one per class."""
    test = math.ceil(fraction * images)
    train = images - test
    if min(train, test) < classes:
        raise ConfigError(
            f"dataset.test_fraction={fraction} leaves {train} training and {test} test images "
            f"of the {images} {name} images, below one per class ({classes}): use a value in "
            f"({(classes - 1) / images:.4g}, {(images - classes) / images:.4g}]"
        )


def _sam_rules(cfg: Any) -> None:
    """The options the chosen variant does not read, and the combinations that are wrong."""
    sam, amp = cfg.sam, cfg.trainer.amp
    if sam.name == "none":
        return
    for key, variants in SAM_VARIANT_OPTIONS.items():
        if sam[key] is not None and sam.name not in variants:
            raise ConfigError(
                f"sam.{key} applies to sam={' or sam='.join(variants)}, not sam={sam.name}"
            )
    if sam.rho_min is not None and sam.rho_min > sam.rho:
        raise ConfigError(f"sam.rho_min must be in [0, sam.rho={sam.rho}], got {sam.rho_min}")
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


def _sam_sharpness_rules(cfg: Any) -> None:
    """m-sharpness: plain SAM only, one perturbation per chunk (not one global one)."""
    sam = cfg.sam
    if sam.m is None:
        return
    if sam.name not in ("sam", "none"):
        raise ConfigError(f"sam.m (m-sharpness) works with sam=sam or sam=asam, not {sam.name}")
    if sam.sync_perturbation:
        raise ConfigError(
            "sam.m gives each chunk of m examples its own perturbation; it cannot be "
            "combined with sam.sync_perturbation=true (one global perturbation)"
        )


def _efficient_variant_rules(cfg: Any) -> None:
    """The efficient variants' own limits: MSAM's stored direction, what FSDP has not tested."""
    sam, optimizer = cfg.sam, cfg.optimizer
    if sam.name in NO_ASCENT_VARIANTS:
        ascent = {
            "adaptive": sam.adaptive,
            "p": sam.p != 2,
            "perturb_fraction": sam.perturb_fraction != 1,
            "inner_steps": sam.inner_steps != 1,
            "include_weight_decay": sam.include_weight_decay,
        }
        changed = [key for key, on in ascent.items() if on]
        if changed:
            raise ConfigError(
                f"sam={sam.name} has a perturbation of its own, not SAM's ascent: "
                f"sam.{changed[0]} does not apply (leave it at its default)"
            )
    elif sam.perturb_fraction != 1 and sam.name not in WEIGHT_PERTURBATION_VARIANTS:
        raise ConfigError(
            f"sam.perturb_fraction (ESAM's stochastic weight perturbation) works with sam="
            f"{', sam='.join(WEIGHT_PERTURBATION_VARIANTS)}, not sam={sam.name}, which uses "
            "every first-pass gradient"
        )
    if sam.name == "msam":
        momentum = optimizer.betas[0] if optimizer.name == "adamw" else optimizer.momentum
        if momentum <= 0:
            key = "optimizer.betas[0]" if optimizer.name == "adamw" else "optimizer.momentum"
            raise ConfigError(f"sam=msam perturbs along the momentum: set {key} above 0")
    if sam.name in ("aesam", "wsam") and cfg.trainer.amp == "fp16":
        raise ConfigError(f"sam={sam.name} needs unscaled gradients: use trainer.amp=bf16")
    if sam.name in SELECTING_VARIANTS:
        _selection_rules(cfg)
    if sam.name == "rst":
        _rst_schedule_rules(sam)
    if sam.name == "bsam" and (
        optimizer.name != "sgd" or optimizer.momentum or optimizer.weight_decay
    ):
        raise ConfigError(
            "sam=bsam makes its own Adam-like update: use optimizer=sgd with "
            "optimizer.momentum=0 and optimizer.weight_decay=0 (its prior is sam.prior_precision)"
        )
    if sam.name in INDEXED_VARIANTS and cfg.dataset.loader == "gpu":
        raise ConfigError(f"sam={sam.name} needs example indices: set dataset.loader=dataloader")
    if sam.name in TRAJECTORY_VARIANTS and cfg.trainer.accum_steps != 1:
        raise ConfigError(
            f"sam={sam.name} compares each batch with reference outputs for the whole batch: "
            "set trainer.accum_steps=1"
        )
    if sam.name in FSDP_UNTESTED_VARIANTS and cfg.trainer.strategy == "fsdp":
        raise ConfigError(
            f"sam={sam.name} is not tested under trainer.strategy=fsdp yet: use "
            "trainer.strategy=ddp"
        )


def _rst_schedule_rules(sam: Any) -> None:
    """RST's p_t moves from sam.probability to sam.probability_end, so a schedule needs both
    ends, and an end without a schedule would be silently ignored."""
    schedule = sam.probability_schedule or "constant"
    if schedule != "constant" and sam.probability_end is None:
        raise ConfigError(
            f"sam.probability_schedule={schedule} needs sam.probability_end, p at the run's end"
        )
    if schedule == "constant" and sam.probability_end is not None:
        shapes = " or ".join(name for name in RST_SCHEDULES if name != "constant")
        raise ConfigError(
            f"sam.probability_end applies to a schedule: set sam.probability_schedule={shapes} "
            "(or drop sam.probability_end)"
        )


def _selection_rules(cfg: Any) -> None:
    """Passes on part of the batch need per-example cross-entropy over one micro-batch."""
    name, trainer, augment = cfg.sam.name, cfg.trainer, cfg.augment
    limits = {
        "trainer.accum_steps=1": trainer.accum_steps != 1,
        "trainer.amp=bf16 or none": trainer.amp == "fp16",
        "augment.mixup_alpha=0 and augment.cutmix_alpha=0": bool(
            augment.mixup_alpha or augment.cutmix_alpha
        ),
        "sam.inner_steps=1": cfg.sam.inner_steps != 1,
    }
    for fix, broken in limits.items():
        if broken:
            raise ConfigError(f"sam={name} selects examples of the batch: set {fix}")


def _fsdp_rules(cfg: Any) -> None:
    """What FSDP2 cannot do: a rank never holds a whole local gradient (per-chunk eps), and
    fp16's GradScaler does not see sharded gradients; the wrap list is FSDP's only."""
    trainer = cfg.trainer
    if trainer.strategy != "fsdp":
        if trainer.fsdp_wrap is not None:
            raise ConfigError("trainer.fsdp_wrap applies to trainer.strategy=fsdp only")
        return
    if cfg.sam.name != "none" and cfg.sam.m is not None:
        raise ConfigError(
            "sam.m (m-sharpness) needs each rank's unsharded gradient; under "
            "trainer.strategy=fsdp eps comes from the global gradient: drop sam.m or use ddp"
        )
    if trainer.amp == "fp16":
        raise ConfigError(
            "trainer.amp=fp16 has no sharded grad scaler here: use trainer.amp=bf16 with "
            "trainer.strategy=fsdp"
        )
    if cfg.ema.decay:
        raise ConfigError(
            "ema.decay with trainer.strategy=fsdp is not supported yet (the EMA copy would be "
            "a sharded model): use trainer.strategy=ddp or ema.decay=null"
        )


def _optimization_rules(cfg: Any) -> None:
    """Batch accumulation, and a schedule that stays below its peak learning rate."""
    trainer, lr = cfg.trainer, cfg.optimizer.lr
    if trainer.batch_size % trainer.accum_steps:
        raise ConfigError(
            f"trainer.batch_size={trainer.batch_size} must be divisible by "
            f"trainer.accum_steps={trainer.accum_steps}"
        )
    if cfg.scheduler.min_lr > lr:
        raise ConfigError(
            f"scheduler.min_lr={cfg.scheduler.min_lr} must not exceed optimizer.lr={lr}"
        )
    if cfg.optimizer.fused and cfg.optimizer.foreach:
        raise ConfigError("optimizer.fused=true and optimizer.foreach=true exclude each other")
    if cfg.optimizer.fused and trainer.strategy == "fsdp":
        raise ConfigError("optimizer.fused=true has no FSDP (DTensor) kernel: drop it for fsdp")


def _recipe_rules(cfg: Any) -> None:
    """EMA and Mixup/CutMix against the options that depend on them."""
    if cfg.checkpoint.best_metric.startswith("test_ema/") and not cfg.ema.decay:
        raise ConfigError(
            f"checkpoint.best_metric={cfg.checkpoint.best_metric} scores the EMA: set "
            "ema.decay (e.g. ema.decay=0.9998)"
        )
    augment = cfg.augment
    if augment.auto_augment is not None and augment.name == "autoaugment":
        raise ConfigError(
            f"augment=autoaugment already applies the CIFAR-10 AutoAugment policy; "
            f"augment.auto_augment={augment.auto_augment} goes with augment=basic or cutout"
        )
    jitter_off = augment.auto_augment is not None and "3a" not in augment.auto_augment
    if jitter_off and augment.color_jitter is not None:
        raise ConfigError(
            "augment.color_jitter is off under augment.auto_augment (timm's rule): set one"
        )


def _init_rules(cfg: Any) -> None:
    """``model.init_from``: an existing file, and not together with the hub's weights."""
    model = cfg.model
    if model.init_from is None:
        if model.init_ema:
            raise ConfigError("model.init_ema=true needs model.init_from=PATH")
        return
    if model.pretrained:
        raise ConfigError(
            "model.init_from and model.pretrained=true both set the starting weights: choose one"
        )
    if not Path(model.init_from).exists():
        raise ConfigError(f"model.init_from={model.init_from}: no such file")
    problem = expect_file(model.init_from, "a checkpoint or weights file (.pt, .pth, .safetensors)")
    if problem is not None:  # a run folder given for its checkpoint
        raise ConfigError(f"model.init_from={problem}")


def _resume_rules(cfg: Any) -> None:
    """``resume=PATH``: a checkpoint file (``auto`` finds one in the run folder)."""
    if cfg.resume not in (None, "auto") and Path(cfg.resume).exists():  # missing: at resume
        problem = expect_file(cfg.resume)
        if problem is not None:
            raise ConfigError(f"resume={problem}")
