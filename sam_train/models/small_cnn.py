"""A small CNN for scikit-learn's 8x8 digits: the quickstart's model (about 0.1M parameters)."""

from __future__ import annotations

from typing import Any

import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

from sam_train.models._registry import PooledLinearHead, cifar_cfg


def _conv_bn(in_chs: int, out_chs: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_chs),
        nn.ReLU(inplace=True),
    )


class SmallCNN(PooledLinearHead, nn.Module):
    """Three conv-BN-ReLU stages, one 2x pooling, global average pool, dropout, linear."""

    def __init__(self, in_chans: int = 1, width: int = 32, **head: Any) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn(in_chans, width),
            _conv_bn(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_bn(2 * width, 4 * width),
        )
        self.init_head(4 * width, **head)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


default_cfgs = generate_default_cfgs(
    {
        "digits_cnn": cifar_cfg(
            input_size=(1, 8, 8), mean=(0.5,), std=(0.5,), first_conv="features.0.0"
        )
    }
)


@register_model
def digits_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """The quickstart CNN for 8x8 single-channel digits."""
    return build_model_with_cfg(SmallCNN, "digits_cnn", pretrained, **kwargs)
