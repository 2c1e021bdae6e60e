"""timm registry glue shared by the models of this package."""

from __future__ import annotations

from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

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


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan-out) convolutions, unit BN scales, zero biases (Linear weights keep
    PyTorch's default): the initialisation of the CIFAR reference implementations."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)


__all__ = [
    "CIFAR_MEAN",
    "CIFAR_STD",
    "IMAGENET_DEFAULT_MEAN",
    "IMAGENET_DEFAULT_STD",
    "cifar_cfg",
    "init_weights",
]
