"""torchvision transforms v2 pipelines for each data set, with timm's create_transform stages
(RandAugment, AugMix, TrivialAugment, colour jitter, random erasing) after the crop and flip
when ``augment`` asks for them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import timm.data
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import v2

from sam_train.data.constants import (  # another size than CIFAR's: upsampled_transforms
    CIFAR_AUGMENTATIONS,
    CIFAR_IMAGE_SIZE,
    CIFAR_MEAN,
    CIFAR_STD,
)

DIGITS_MEAN, DIGITS_STD = (0.3053,), (0.3760,)  # of load_digits().images / 16


def _float_normalized(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]


def _to_normalized_tensor(mean: tuple[float, ...], std: tuple[float, ...]) -> list[v2.Transform]:
    return [v2.ToImage(), *_float_normalized(mean, std)]


class Cutout(v2.RandomErasing):
    """Cutout (DeVries & Taylor, 2017): zero a ``size`` x ``size`` square of the normalized image.

    The square's centre is a uniformly drawn pixel and the square is clipped at the border, so
    near an edge less than ``size`` x ``size`` is erased: the reference implementation's rule,
    which ``v2.RandomErasing`` (patch always inside the image) does not follow. The erasing
    itself is torchvision's kernel; only where the patch goes is chosen here.
    """

    def __init__(self, size: int = 16) -> None:
        super().__init__(p=1.0, value=0.0)
        if size <= 0:
            raise ValueError(f"cutout size must be positive, got {size}")
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.functional.get_size(flat_inputs[0])
        cy = int(torch.randint(height, ()).item())
        cx = int(torch.randint(width, ()).item())
        top, left = max(cy - self.size // 2, 0), max(cx - self.size // 2, 0)
        bottom = min(cy - self.size // 2 + self.size, height)
        right = min(cx - self.size // 2 + self.size, width)
        return {
            "i": top,
            "j": left,
            "h": bottom - top,
            "w": right - left,
            "v": torch.zeros(1, 1, 1),
        }

    def extra_repr(self) -> str:
        return f"size={self.size}"


def timm_stages(
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    auto_augment: str | None = None,
    color_jitter: float | None = None,
    reprob: float = 0.0,
    remode: str = "pixel",
    recount: int = 1,
) -> list[Any]:
    """What timm's ``create_transform(separate=True)`` puts after its crop and flip: the
    policy (RandAugment, AugMix, AutoAugment) or colour jitter on the PIL image, then
    to-tensor, normalize and random erasing. ``ta_wide`` is torchvision's TrivialAugmentWide
    (timm has none), in the policy's place. The arguments are ``augment``'s option names."""
    _crop_flip, policy, final = timm.data.create_transform(
        image_size,
        is_training=True,
        auto_augment=None if auto_augment == "ta_wide" else auto_augment,
        color_jitter=color_jitter,
        re_prob=reprob,
        re_mode=remode,
        re_count=recount,
        mean=mean,
        std=std,
        separate=True,
    )
    trivial = [v2.TrivialAugmentWide()] if auto_augment == "ta_wide" else []
    return [*trivial, *policy.transforms, *final.transforms]


def cifar_transforms(
    train: bool,
    augment: str = "basic",
    cutout_size: int = 16,
    options: Mapping[str, Any] | None = None,
) -> v2.Compose:
    """CIFAR pipelines of the SAM paper's Table 1 columns (evaluation only normalizes).

    ``basic``: pad-4 random crop and horizontal flip; ``cutout``: basic, then a cutout square;
    ``autoaugment``: the CIFAR-10 AutoAugment policy (Cubuk et al., 2019), then basic, then
    cutout, the order of the AutoAugment reference code. ``options`` (``transform_options``
    of the config) put timm's stages (:func:`timm_stages`) after the crop and flip.
    """
    if augment not in CIFAR_AUGMENTATIONS:
        raise ValueError(f"augment must be one of {CIFAR_AUGMENTATIONS}, got {augment!r}")
    if not train:
        return v2.Compose(_to_normalized_tensor(CIFAR_MEAN, CIFAR_STD))
    steps: list[v2.Transform] = []
    if augment == "autoaugment":
        steps.append(v2.AutoAugment(v2.AutoAugmentPolicy.CIFAR10))
    steps += [v2.RandomCrop(CIFAR_IMAGE_SIZE, padding=4), v2.RandomHorizontalFlip()]
    if options:
        steps += timm_stages(CIFAR_IMAGE_SIZE, CIFAR_MEAN, CIFAR_STD, **options)
    else:
        steps += _to_normalized_tensor(CIFAR_MEAN, CIFAR_STD)
    if augment in ("cutout", "autoaugment"):
        steps.append(Cutout(cutout_size))
    return v2.Compose(steps)


class Normalization(NamedTuple):
    """Per-channel mean and std: ImageNet's, or those a pretrained model was trained with
    (timm's ``pretrained_cfg``: 0.5 for the ViTs of google-research/vision_transformer)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]


IMAGENET_NORMALIZATION = Normalization(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


def imagenet_transforms(
    train: bool,
    image_size: int = 224,
    options: Mapping[str, Any] | None = None,
    normalization: Normalization = IMAGENET_NORMALIZATION,
) -> v2.Compose:
    """RandomResizedCrop + flip for training; resize to 8/7 and center-crop for evaluation.
    ``options`` put timm's stages (:func:`timm_stages`) after the training crop and flip."""
    mean, std = normalization
    if train and options:
        crop_flip = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
        stages = timm_stages(image_size, mean, std, **options)
        return v2.Compose([*crop_flip, *stages])
    if train:
        augment = [v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        augment = [v2.Resize(round(image_size * 8 / 7), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *augment, *_float_normalized(mean, std)])


def upsampled_transforms(
    train: bool,
    image_size: int,
    options: Mapping[str, Any] | None = None,
    normalization: Normalization = IMAGENET_NORMALIZATION,
) -> v2.Compose:
    """Small images (CIFAR) for a model pretrained at ``image_size``, as the SAM paper's Table 3
    fine-tunes ImageNet-trained EfficientNets on CIFAR at their own resolution.

    ``normalization``: the pretrained weights' (ImageNet's by default). Training is
    :func:`imagenet_transforms`' RandomResizedCrop and flip (with ``options``' timm stages).
    Evaluation resizes the whole image to ``image_size`` without the 8/7 resize and centre
    crop: a 32 px image has no border to spare, and the fine-tuning references do the same
    (google-research/vision_transformer's input pipeline resizes CIFAR test images straight
    to the training crop size; BiT's HyperRule resizes small images without a test crop).
    """
    if train:
        return imagenet_transforms(True, image_size, options, normalization)
    resize = v2.Resize((image_size, image_size), antialias=True)
    return v2.Compose([v2.ToImage(), resize, *_float_normalized(*normalization)])


def digits_transforms() -> v2.Normalize:
    """Digits are already float tensors in [0, 1]; only normalize (8x8 leaves no room to crop)."""
    return v2.Normalize(DIGITS_MEAN, DIGITS_STD)
