"""torchvision transforms v2 pipelines for each data set."""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from sam_train.models._registry import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_DEFAULT_MEAN,
    IMAGENET_DEFAULT_STD,
)

DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)  # of load_digits().images / 16


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def cifar_transforms(train: bool) -> v2.Compose:
    """Standard CIFAR augmentation: pad-4 random crop and horizontal flip, then normalize."""
    augment = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()] if train else []
    return v2.Compose(augment + _to_normalized_tensor(CIFAR_MEAN, CIFAR_STD))


def imagenet_transforms(train: bool, image_size: int = 224) -> v2.Compose:
    """RandomResizedCrop + flip for training; resize to 8/7 and center-crop for evaluation."""
    if train:
        augment = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        augment = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(
        [
            v2.ToImage(),
            *augment,
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
        ]
    )


def digits_transforms() -> v2.Normalize:
    """Digits are already float tensors in [0, 1]; only normalize (8x8 leaves no room to crop)."""
    return v2.Normalize(DIGITS_MEAN, DIGITS_STD)
