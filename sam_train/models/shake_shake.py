"""Shake-Shake ResNets for 32x32 inputs (Gastaldi, 2017): the SAM paper's "Shake-Shake 26 2x96d".

Three stages of (depth - 2) / 6 blocks; each block sums two ReLU-conv-BN-ReLU-conv-BN branches
with per-sample random weights (:func:`sam_train.models.shake.shake_shake`). Where the width or
resolution changes, the shortcut is Gastaldi's: two 1x1-strided paths, the second shifted by one
pixel, each projected to half the channels, concatenated, batch-normalized. The layout follows
the AutoAugment reference implementation that the SAM paper's code reproduces.
Shake-Shake 26 2x96d: 26.2M parameters.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from sam_train.models._registry import (
    ThreeStageNet,
    cifar_cfg,
    cifar_stages,
    stage_blocks,
)
from sam_train.models.shake import shake_shake


def _branch(in_chs: int, out_chs: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReLU(),
        nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
    )


class _Shortcut(nn.Module):
    """Gastaldi's projection shortcut: two strided 1x1 paths, one offset by a pixel."""

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 1, bias=False)
        self.conv2 = nn.Conv2d(in_chs, out_chs - out_chs // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        path1 = x[:, :, :: self.stride, :: self.stride]
        shifted = F.pad(x, (0, 1, 0, 1))[:, :, 1:, 1:]
        path2 = shifted[:, :, :: self.stride, :: self.stride]
        return self.bn(torch.cat([self.conv1(path1), self.conv2(path2)], dim=1))


class ShakeShakeBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.branch_a = _branch(in_chs, out_chs, stride)
        self.branch_b = _branch(in_chs, out_chs, stride)
        self.shortcut = (
            _Shortcut(in_chs, out_chs, stride) if stride != 1 or in_chs != out_chs else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = shake_shake(self.branch_a(x), self.branch_b(x), self.training)
        return mixed + (x if self.shortcut is None else self.shortcut(x))


class ShakeShakeResNet(ThreeStageNet):
    """Shake-Shake ResNet-depth with widths base_width x (1, 2, 4); timm classifier interface."""

    def __init__(
        self, depth: int = 26, base_width: int = 96, in_chans: int = 3, **head: Any
    ) -> None:
        blocks = stage_blocks("Shake-Shake", depth, 2, 2)
        widths = (base_width, 2 * base_width, 4 * base_width)
        stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        stages = cifar_stages(ShakeShakeBlock, 16, widths, blocks)
        super().__init__(stem, stages, widths[-1], **head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.stages(self.stem(x)))


default_cfgs = generate_default_cfgs({"shake_shake26_2x96d": cifar_cfg(first_conv="stem.0")})


@register_model
def shake_shake26_2x96d(pretrained: bool = False, **kwargs: Any) -> ShakeShakeResNet:
    """Shake-Shake 26 2x96d, the SAM paper's Table 1 model (26.2M parameters).

    ``depth`` and ``base_width`` may be overridden (``model.kwargs.base_width=8``) for a quick
    run of the same architecture.
    """
    args = {"depth": 26, "base_width": 96, **kwargs}
    return build_model_with_cfg(ShakeShakeResNet, "shake_shake26_2x96d", pretrained, **args)
