"""The CIFAR ResNets of He et al. (CVPR 2016, section 4.2): ResNet-(6n + 2), 0.46M for n = 5.

ResNet-32 is the model of the SAM paper's label-noise experiment (Table 4). Three stages of n
post-activation basic blocks at widths 16, 32 and 64; the shortcut is the paper's option A
(identity, subsampled, new channels zero-padded), so it adds no parameters.
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


class BasicBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.stride = stride
        self.pad_chs = out_chs - in_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x[:, :, :: self.stride, :: self.stride] if self.stride != 1 else x
        if self.pad_chs:
            shortcut = F.pad(shortcut, (0, 0, 0, 0, 0, self.pad_chs))
        return torch.relu(out + shortcut)


class CifarResNet(ThreeStageNet):
    """ResNet-depth for 32x32 images with timm's classifier interface."""

    def __init__(
        self, depth: int = 32, base_width: int = 16, in_chans: int = 3, **head: Any
    ) -> None:
        blocks = stage_blocks("CIFAR ResNet", depth, 2, 2)
        widths = (base_width, 2 * base_width, 4 * base_width)
        stem = nn.Sequential(
            nn.Conv2d(in_chans, base_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        )
        stages = cifar_stages(BasicBlock, base_width, widths, blocks)
        super().__init__(stem, stages, widths[-1], **head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))


default_cfgs = generate_default_cfgs({"cifar_resnet32": cifar_cfg(first_conv="stem.0")})


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 for CIFAR (0.46M parameters), the SAM paper's label-noise model."""
    args = {"depth": 32, **kwargs}
    return build_model_with_cfg(CifarResNet, "cifar_resnet32", pretrained, **args)
