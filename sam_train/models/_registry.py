"""timm registry glue shared by the models of this package."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def cifar_cfg(**overrides: Any) -> dict[str, Any]:
    """A timm pretrained_cfg for a model trained from scratch on 32x32 images."""
    cfg = {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR_MEAN,
        "std": CIFAR_STD,
        "first_conv": "stem",
        "classifier": "fc",
    }
    cfg.update(overrides)
    return cfg


__all__ = ["CIFAR_MEAN", "CIFAR_STD", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD", "cifar_cfg"]
