"""Build a model by name through timm, with this package's models registered."""

from __future__ import annotations

import difflib
from typing import Any

import timm
from torch import nn

from sam_train.errors import ConfigError


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with a one-line error for an unknown name."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(
            f"model.name={name!r} is not a timm model or one of sam_train's "
            f"(digits_cnn, wrn16_4, wrn16_8, wrn28_10, shake_shake26_2x96d, pyramidnet272_a200, "
            f"pyramidnet272_a200_shakedrop, cifar_resnet32).{hint}"
        )
    try:
        return timm.create_model(
            name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except (TypeError, ValueError) as err:  # an unknown keyword or a bad value in model.kwargs
        raise ConfigError(f"model.kwargs {dict(kwargs)} rejected by {name}: {err}") from err
