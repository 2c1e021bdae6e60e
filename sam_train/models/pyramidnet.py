"""PyramidNets for 32x32 inputs (Han et al., CVPR 2017), optionally with ShakeDrop (Yamada et al.).

Bottleneck blocks whose width grows by alpha / N after each of the N = 3 (depth - 2) / 9 blocks:
BN-conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN, no ReLU after the addition; shortcuts
average-pool to downsample and zero-pad the new channels. ShakeDrop keeps block l of N with
probability 1 - 0.5 l / N.
PyramidNet-272, alpha = 200, bottleneck: 26.0M parameters as published by Han et al. (widths
truncated, ``width_rounding="floor"``); the SAM paper's JAX code, like the AutoAugment and Fast
AutoAugment code before it, rounds the widths instead, which adds 0.2M parameters (26.2M). The
default follows the SAM paper's code, the model its Table 1 numbers come from.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from sam_train.models._registry import ThreeStageNet, cifar_cfg, stage_blocks
from sam_train.models.shake import ShakeDrop


class PyramidBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_chs: int, width: int, stride: int, keep_prob: float | None) -> None:
        super().__init__()
        out_chs = width * self.expansion
        self.residual = nn.Sequential(
            nn.BatchNorm2d(in_chs),
            nn.Conv2d(in_chs, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, out_chs, 1, bias=False),
            nn.BatchNorm2d(out_chs),
        )
        self.shake_drop = ShakeDrop(keep_prob) if keep_prob is not None else nn.Identity()
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.shake_drop(self.residual(x))
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True) if self.stride != 1 else x
        if self.pad_chs:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad_chs))
        return out + shortcut


class PyramidNet(ThreeStageNet):
    """Bottleneck PyramidNet-depth with widening factor alpha; timm's classifier interface."""

    def __init__(
        self,
        depth: int = 272,
        alpha: float = 200,
        shake_drop: bool = False,
        shake_drop_final_drop: float = 0.5,
        width_rounding: str = "round",
        in_chans: int = 3,
        **head: Any,
    ) -> None:
        blocks = stage_blocks("bottleneck PyramidNet", depth, 3, 2)
        if width_rounding not in ("round", "floor"):
            raise ValueError(f"width_rounding must be 'round' or 'floor', got {width_rounding!r}")
        to_int = round if width_rounding == "round" else math.floor
        total = 3 * blocks
        stem = nn.Sequential(nn.Conv2d(in_chans, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16))
        stages, in_chs, width, index = [], 16, 16.0, 0
        for stride in (1, 2, 2):
            layers = []
            for b in range(blocks):
                index += 1
                width += alpha / total
                keep = 1.0 - shake_drop_final_drop * index / total if shake_drop else None
                block = PyramidBottleneck(in_chs, to_int(width), stride if b == 0 else 1, keep)
                layers.append(block)
                in_chs = to_int(width) * PyramidBottleneck.expansion
            stages.append(nn.Sequential(*layers))
        norm = nn.BatchNorm2d(in_chs)
        super().__init__(stem, nn.Sequential(*stages), in_chs, norm=norm, **head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.stages(self.stem(x))))


def _create(variant: str, pretrained: bool, **kwargs: Any) -> PyramidNet:
    return build_model_with_cfg(PyramidNet, variant, pretrained, **kwargs)


default_cfgs = generate_default_cfgs(
    {
        "pyramidnet272_a200": cifar_cfg(first_conv="stem.0"),
        "pyramidnet272_a200_shakedrop": cifar_cfg(first_conv="stem.0"),
    }
)


@register_model
def pyramidnet272_a200(pretrained: bool = False, **kwargs: Any) -> PyramidNet:
    """PyramidNet-272, alpha 200, bottleneck (26.0M parameters): the paper's "PyramidNet".

    ``depth`` and ``alpha`` may be overridden (``model.kwargs.depth=11``) for a quick run.
    """
    return _create("pyramidnet272_a200", pretrained, **{"depth": 272, "alpha": 200, **kwargs})


@register_model
def pyramidnet272_a200_shakedrop(pretrained: bool = False, **kwargs: Any) -> PyramidNet:
    """PyramidNet-272 (alpha 200) with ShakeDrop: the paper's "PyramidNet+ShakeDrop"."""
    args = {"depth": 272, "alpha": 200, "shake_drop": True, **kwargs}
    return _create("pyramidnet272_a200_shakedrop", pretrained, **args)
