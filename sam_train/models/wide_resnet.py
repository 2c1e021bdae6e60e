"""Wide Residual Networks for 32x32 inputs (Zagoruyko & Komodakis, BMVC 2016).

Pre-activation basic blocks, widths 16k/32k/64k in three stages of (depth - 4) / 6 blocks: the
architecture of the SAM paper's CIFAR tables (WRN-28-10: 36.5M parameters).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from sam_train.models._registry import (
    ThreeStageNet,
    cifar_cfg,
    cifar_stages,
    stage_blocks,
)


class _BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int, drop_rate: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, stride=1, padding=1, bias=False)
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
        self.shortcut = (
            nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False)
            if stride != 1 or in_chs != out_chs
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.drop(torch.relu(self.bn2(out))))
        return out + shortcut


class WideResNet(ThreeStageNet):
    """WRN-depth-widen for small images, with timm's classifier interface."""

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        in_chans: int = 3,
        drop_rate: float = 0.0,
        **head: Any,
    ) -> None:
        blocks = stage_blocks("WRN", depth, 2, 4, least=0)
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        stem = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        block = partial(_BasicBlock, drop_rate=drop_rate)
        stages = cifar_stages(block, widths[0], widths[1:], blocks)
        # WRN's dropout sits between the convolutions of each block, not before the classifier.
        norm = nn.BatchNorm2d(widths[-1])
        super().__init__(
            stem, stages, widths[-1], norm, head_dropout=False, drop_rate=drop_rate, **head
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.stages(self.stem(x))))


def _create(variant: str, depth: int, widen_factor: int, pretrained: bool, **kwargs: Any):
    return build_model_with_cfg(
        WideResNet, variant, pretrained, depth=depth, widen_factor=widen_factor, **kwargs
    )


default_cfgs = generate_default_cfgs(
    {"wrn28_10": cifar_cfg(), "wrn16_8": cifar_cfg(), "wrn16_4": cifar_cfg()}
)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-28-10, the SAM paper's main CIFAR model (36.5M parameters)."""
    return _create("wrn28_10", 28, 10, pretrained, **kwargs)


@register_model
def wrn16_8(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-8 (11.0M parameters)."""
    return _create("wrn16_8", 16, 8, pretrained, **kwargs)


@register_model
def wrn16_4(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WRN-16-4 (2.7M parameters): the CPU benchmark's CIFAR-sized model."""
    return _create("wrn16_4", 16, 4, pretrained, **kwargs)
