"""Build the train and test sets named by the config, with a clear error for missing data."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

import sam_train.data.transforms as T
from sam_train.data.cifar_checks import check_loaded, find_bad_file
from sam_train.data.constants import CIFAR_IMAGE_SIZE
from sam_train.data.image_folder import build_image_folders, error_reason, verify_images
from sam_train.data.label_noise import apply_label_noise
from sam_train.data.torchvision_sets import TORCHVISION_SETS, torchvision_pair
from sam_train.errors import DatasetError


@dataclass
class DatasetPair:
    train: Dataset
    test: Dataset
    num_classes: int


class TensorImageDataset(Dataset):
    """Images held in memory as one float tensor (digits), with an optional transform."""

    def __init__(self, images: torch.Tensor, targets: np.ndarray, transform=None) -> None:
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self.images[index]
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _digits(test_fraction: float, seed: int) -> tuple[TensorImageDataset, TensorImageDataset]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.from_numpy(digits.images / 16.0).float().unsqueeze(1)  # N x 1 x 8 x 8
    # The split is fixed (seed 0) so every run, whatever its seed, tests on the same images.
    train_idx, test_idx = train_test_split(
        np.arange(len(digits.target)),
        test_size=test_fraction,
        random_state=0,
        stratify=digits.target,
    )
    transform = T.digits_transforms()
    return (
        TensorImageDataset(images[train_idx], digits.target[train_idx], transform),
        TensorImageDataset(images[test_idx], digits.target[test_idx], transform),
    )


_CIFAR_FILES = {
    "cifar10": ("cifar-10-batches-py", "data_batch_1..5, test_batch, batches.meta"),
    "cifar100": ("cifar-100-python", "train, test, meta"),
}


def cifar_pipelines(
    image_size: int,
    augment: str,
    cutout_size: int,
    options: dict[str, Any],
    normalization: T.Normalization = T.IMAGENET_NORMALIZATION,
) -> tuple[Callable, Callable]:
    """CIFAR's training and test transforms: its own at 32 px (the paper's Table 1), else the
    upsampling ones for a model pretrained at ``image_size`` (Table 3's fine-tuning). Cutout
    and AutoAugment are defined on 32 px images and are refused at another size."""
    if image_size == CIFAR_IMAGE_SIZE:
        return T.cifar_transforms(True, augment, cutout_size, options), T.cifar_transforms(False)
    if augment != "basic":
        raise DatasetError(
            f"augment={augment} works on CIFAR's own {CIFAR_IMAGE_SIZE} px images; "
            f"image_size={image_size} upsamples them and takes augment=basic"
        )
    train = T.upsampled_transforms(True, image_size, options, normalization)
    return train, T.upsampled_transforms(False, image_size, normalization=normalization)


def _cifar(
    name: str,
    root: str,
    download: bool,
    verify_checksums: bool,
    num_classes: int,
    pipelines: tuple[Callable, Callable],
):
    base = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    cls = base if verify_checksums else _without_checksums(base)
    folder, files = _CIFAR_FILES[name]
    train_transform, test_transform = pipelines
    try:
        pair = (
            cls(root, train=True, download=download, transform=train_transform),
            cls(root, train=False, download=download, transform=test_transform),
        )
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        find_bad_file(base, root, num_classes)  # names a damaged file, if that is the cause
        raise DatasetError(
            f"{name} not found or unreadable under dataset.root={root!r} (expected "
            f"{Path(root) / folder}/ with {files}, or network access to download it): "
            f"{error_reason(err)}"
        ) from err
    for split in pair:
        check_loaded(split, base, root, num_classes)
    return pair


def _without_checksums(base: type) -> type:
    """The torchvision class with md5 checks off: for data written by tests or converted."""
    return type(
        f"{base.__name__}NoChecksum",
        (base,),
        {
            "train_list": [[name, None] for name, _ in base.train_list],
            "test_list": [[name, None] for name, _ in base.test_list],
            "meta": {**base.meta, "md5": None},
        },
    )


def _imagenet(
    root: str,
    image_size: int,
    num_classes: int,
    verify: bool,
    options: dict[str, Any],
    normalization: T.Normalization,
):
    pair = build_image_folders(
        root,
        num_classes,
        T.imagenet_transforms(True, image_size, options, normalization),
        T.imagenet_transforms(False, image_size, normalization=normalization),
    )
    if verify:
        for split in pair:
            verify_images([path for path, _label in split.samples])
    return pair


def _check_class_count(name: str, train: Any, num_classes: int) -> None:
    """A class list declared by the files (CIFAR's meta, ImageFolder's folders, torchvision's
    sets) of another length than ``dataset.num_classes`` is refused: more would index past the
    classifier, fewer leave outputs that no label trains. Where the classes are only the
    labels seen (digits), a subset cannot be told from a mismatch: only labels past the
    outputs are refused."""
    declared = getattr(train, "classes", None)
    found = len(declared) if declared else len(np.unique(train.targets))
    if found > num_classes or (declared and found < num_classes):
        raise DatasetError(
            f"{name} has {found} classes but dataset.num_classes={num_classes}: set "
            f"dataset.num_classes={found}"
        )


def build_datasets(
    name: str,
    *,
    root: str = "data",
    num_classes: int,
    image_size: int = 32,
    download: bool = True,
    verify_checksums: bool = True,
    label_noise: float = 0.0,
    test_fraction: float = 0.25,
    seed: int = 0,
    augment: str = "basic",
    cutout_size: int = 16,
    verify: bool = False,
    transform_options: dict[str, Any] | None = None,
    normalization: T.Normalization = T.IMAGENET_NORMALIZATION,
) -> DatasetPair:
    """The train and test sets; ``label_noise`` corrupts training labels only.

    ``augment`` (basic | cutout | autoaugment) chooses the CIFAR training pipeline; the other
    data sets have one pipeline each and accept only ``basic``. ``image_size`` is the size
    of the images out of every pipeline but digits'; CIFAR at another size than 32 px is
    upsampled (:func:`cifar_pipelines`). What is cheap to check is checked here (class
    folders, label ranges, label counts, damaged CIFAR pickles);
    ``verify`` (``dataset.verify``) also decodes every image of an image folder once, so a
    damaged image is refused before training rather than at its first read (see
    ``image_folder``). ``transform_options`` (``augment.auto_augment``, ``reprob``, ...) add
    timm's transform stages to the CIFAR and ImageFolder training pipelines. ``normalization``
    is the mean and std of the ImageNet-style pipelines (ImageFolder, torchvision's sets,
    upsampled CIFAR): a pretrained model's own, as timm's ``resolve_data_config`` gives them.
    """
    options = dict(transform_options or {})
    if options and name == "digits":
        raise DatasetError(f"augment.{next(iter(options))} transforms PIL images; digits has none")
    if augment != "basic" and name not in _CIFAR_FILES:
        raise DatasetError(f"augment={augment} is for CIFAR; {name} supports augment=basic only")
    if name == "digits":
        train, test = _digits(test_fraction, seed)
    elif name in _CIFAR_FILES:
        pipelines = cifar_pipelines(image_size, augment, cutout_size, options, normalization)
        train, test = _cifar(name, root, download, verify_checksums, num_classes, pipelines)
    elif name == "imagenet":
        train, test = _imagenet(root, image_size, num_classes, verify, options, normalization)
    elif name in TORCHVISION_SETS:
        train, test = torchvision_pair(
            name, root, image_size, download, verify_checksums, options, normalization
        )
    else:
        raise DatasetError(f"unknown dataset {name!r}")
    _check_class_count(name, train, num_classes)
    if label_noise > 0:
        _corrupt_labels(train, num_classes, label_noise, seed)
    return DatasetPair(train, test, num_classes)


def _corrupt_labels(train: Dataset, num_classes: int, label_noise: float, seed: int) -> None:
    """Replace a ``label_noise`` fraction of the training labels, wherever the set keeps them."""
    noisy = apply_label_noise(train.targets, num_classes, label_noise, seed)
    if isinstance(train, TensorImageDataset):
        train.targets = noisy
    else:  # torchvision keeps labels in .targets (CIFAR) and .samples (ImageFolder)
        train.targets = noisy.tolist()
        if hasattr(train, "samples"):
            train.samples = [
                (path, int(t)) for (path, _), t in zip(train.samples, noisy, strict=True)
            ]
            train.imgs = train.samples
