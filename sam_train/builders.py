"""Config -> objects. Each ``*_kwargs`` helper maps one config node to a library's arguments.

Only this module and ``train.py`` read the config; everything they build is plain torch/timm.
"""

from __future__ import annotations

from typing import Any

import timm.optim
import timm.scheduler
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim import Optimizer

from sam_train.config import SAM_VARIANT_OPTIONS
from sam_train.sam import VARIANTS


def optimizer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """Arguments for ``timm.optim.create_optimizer_v2``."""
    kwargs: dict[str, Any] = {
        "lr": cfg.lr,
        "weight_decay": cfg.weight_decay,
        "filter_bias_and_bn": cfg.filter_bias_and_bn,
    }
    if cfg.name == "sgd":  # timm: "sgd" is Nesterov SGD, "momentum" is plain momentum SGD
        kwargs.update(opt="sgd" if cfg.nesterov else "momentum", momentum=cfg.momentum)
    else:
        kwargs.update(opt=cfg.name, betas=tuple(cfg.betas), eps=cfg.eps)
    return kwargs


def sam_kwargs(cfg: DictConfig, lr_min: float = 0.0) -> dict[str, Any]:
    """Arguments of the ``sam.name`` variant's class; unset variant options keep its defaults.

    ``lr_min`` is the schedule's floor, which GSAM's rho schedule needs.
    """
    kwargs: dict[str, Any] = {
        "rho": cfg.rho,
        "adaptive": cfg.adaptive,
        "eta": cfg.eta,
        "p": cfg.p,
        "perturb_fraction": cfg.perturb_fraction,
        "include_weight_decay": cfg.include_weight_decay,
        "inner_steps": cfg.inner_steps,
    }
    for key, variants in SAM_VARIANT_OPTIONS.items():
        if cfg.name in variants and cfg[key] is not None:
            kwargs[key] = cfg[key]
    if cfg.name == "gsam":
        kwargs["lr_min"] = lr_min
    return kwargs


def build_optimizer(
    model: nn.Module, opt_cfg: DictConfig, sam_cfg: DictConfig, lr_min: float = 0.0
) -> Optimizer:
    """timm's optimizer (its weight-decay grouping), wrapped in the SAM variant ``sam.name``
    unless ``sam=none``."""
    base = timm.optim.create_optimizer_v2(model, **optimizer_kwargs(opt_cfg))
    if sam_cfg.name == "none":
        return base
    return VARIANTS[sam_cfg.name].wrap(base, **sam_kwargs(sam_cfg, lr_min))


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
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, **scheduler_kwargs(cfg, epochs, updates_per_epoch)
    )
    return scheduler


def build_data(dataset_cfg: DictConfig, seed: int, download: bool = False):
    """The train and test sets of a ``dataset`` config node (as training builds them: the
    same split and the same noisy labels for the same seed)."""
    from sam_train.data import build_datasets

    return build_datasets(
        dataset_cfg.name,
        root=dataset_cfg.root,
        num_classes=dataset_cfg.num_classes,
        image_size=dataset_cfg.image_size,
        download=download,
        verify_checksums=dataset_cfg.verify_checksums,
        label_noise=dataset_cfg.label_noise,
        test_fraction=dataset_cfg.test_fraction,
        seed=seed,
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit CUDA request without a GPU is an error."""
    from sam_train.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.device={name} but CUDA is not available; use trainer.device=cpu"
        )
    return device


def flat_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as ``{"a.b": value}`` (for TensorBoard's HParams)."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return flat
