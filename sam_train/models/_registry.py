"""timm registry glue shared by the models of this package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sam_train.data.constants import CIFAR_MEAN, CIFAR_STD


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


def stage_blocks(name: str, depth: int, layers_per_block: int, extra: int, least: int = 1) -> int:
    """Blocks per stage of a three-stage network ``depth`` layers deep: depth is
    ``3 * layers_per_block * n + extra`` (stem and classifier); a ValueError otherwise."""
    per_stage = 3 * layers_per_block
    if (depth - extra) % per_stage or depth < per_stage * least + extra:
        raise ValueError(
            f"{name} depth must be {per_stage}n + {extra} with n >= {least}, got {depth}"
        )
    return (depth - extra) // per_stage


def cifar_stages(
    block: Callable[[int, int, int], nn.Module],
    in_chs: int,
    widths: tuple[int, int, int],
    blocks_per_stage: int,
) -> nn.Sequential:
    """The three stages of the CIFAR ResNets: ``block(in_chs, out_chs, stride)`` repeated, the
    first block of the second and third stage halving the resolution."""
    stages = []
    for width, stride in zip(widths, (1, 2, 2), strict=True):
        layers = []
        for b in range(blocks_per_stage):
            layers.append(block(in_chs, width, stride if b == 0 else 1))
            in_chs = width
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages)


class PooledLinearHead:
    """timm's classifier interface for a ``forward_features`` that ends in a feature map.

    The head is global average pooling (or flattening, ``global_pool=""``), dropout and a linear
    ``fc``, so ``timm.create_model(..., num_classes=0)``, ``reset_classifier`` and
    ``forward_head(pre_logits=True)`` behave as for timm's own models. Mix it in before
    ``nn.Module`` and call :meth:`init_head` at the end of ``__init__``, so the classifier is
    the last layer created (the order of the random draws at initialisation depends on it).
    """

    fc: nn.Module
    num_features: int
    num_classes: int
    global_pool: str
    head_drop_rate: float
    training: bool  # nn.Module's

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def init_head(
        self,
        num_features: int,
        *,
        num_classes: int = 10,
        global_pool: str = "avg",
        drop_rate: float = 0.0,
        head_dropout: bool = True,
    ) -> None:
        """The classifier; its keyword arguments are timm's options, which every network's
        constructor takes as ``**head`` and passes on, so their defaults are these only.
        ``head_dropout=False``: ``drop_rate`` is the network's own (WRN's, inside its blocks)."""
        self.drop_rate = drop_rate
        drop_rate = drop_rate if head_dropout else 0.0
        if not 0.0 <= drop_rate <= 1.0:  # nn.Dropout's check, made at build time
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {drop_rate}")
        self.num_features = num_features
        self.head_drop_rate = drop_rate
        self.global_pool = global_pool
        self.reset_classifier(num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3)) if self.global_pool == "avg" else x.flatten(1)
        if self.head_drop_rate:
            x = F.dropout(x, self.head_drop_rate, self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class ThreeStageNet(PooledLinearHead, nn.Module):
    """The CIFAR networks' shared frame: ``stem``, the three ``stages``, an optional final
    ``norm``, then the pooled linear head, initialised as the reference implementations are.

    A subclass builds its stem and stages (in that order: the random draws at initialisation
    follow it), passes them here with its ``**head`` (timm's ``num_classes``, ``global_pool``,
    ``drop_rate``), and defines ``forward_features``.
    """

    def __init__(
        self,
        stem: nn.Module,
        stages: nn.Module,
        num_features: int,
        norm: nn.Module | None = None,
        head_dropout: bool = True,
        **head: Any,
    ) -> None:
        """``head``: the subclass constructor's ``**head``, passed to :meth:`init_head`;
        ``head_dropout=False`` for a network that drops out inside its blocks (WRN)."""
        super().__init__()
        self.stem = stem
        self.stages = stages
        if norm is not None:
            self.norm = norm
        self.init_head(num_features, head_dropout=head_dropout, **head)
        init_weights(self)


__all__ = [
    "PooledLinearHead",
    "ThreeStageNet",
    "cifar_cfg",
    "cifar_stages",
    "init_weights",
]
