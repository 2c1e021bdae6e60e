"""Build the train and test sets named by the config, with a clear error for missing data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from sam_train.data import transforms as T
from sam_train.data.label_noise import apply_label_noise
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


def _cifar(name: str, root: str, download: bool, verify_checksums: bool):
    base = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    cls = base if verify_checksums else _without_checksums(base)
    folder, files = _CIFAR_FILES[name]
    try:
        return (
            cls(root, train=True, download=download, transform=T.cifar_transforms(True)),
            cls(root, train=False, download=download, transform=T.cifar_transforms(False)),
        )
    except Exception as err:  # torchvision raises RuntimeError, URLError, OSError, ...
        raise DatasetError(
            f"{name} not found or unreadable under dataset.root={root!r} (expected "
            f"{Path(root) / folder}/ with {files}, or network access to download it): {err}"
        ) from err


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


def _imagenet(root: str, image_size: int):
    folders = {split: Path(root) / split for split in ("train", "val")}
    missing = [str(path) for path in folders.values() if not path.is_dir()]
    if missing:
        raise DatasetError(
            f"imagenet folder missing under dataset.root={root!r}: {', '.join(missing)} "
            "(expected train/<class>/<image> and val/<class>/<image>)"
        )
    try:
        return (
            tv_datasets.ImageFolder(folders["train"], T.imagenet_transforms(True, image_size)),
            tv_datasets.ImageFolder(folders["val"], T.imagenet_transforms(False, image_size)),
        )
    except (FileNotFoundError, OSError) as err:
        raise DatasetError(
            f"imagenet folder under dataset.root={root!r} is malformed: {err}"
        ) from err


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
) -> DatasetPair:
    """The train and test sets; ``label_noise`` corrupts training labels only."""
    if name == "digits":
        train, test = _digits(test_fraction, seed)
    elif name in _CIFAR_FILES:
        train, test = _cifar(name, root, download, verify_checksums)
    elif name == "imagenet":
        train, test = _imagenet(root, image_size)
    else:
        raise DatasetError(f"unknown dataset {name!r}")
    found = len(getattr(train, "classes", None) or np.unique(train.targets))
    if found > num_classes:
        raise DatasetError(f"{name} has {found} classes but dataset.num_classes={num_classes}")
    if label_noise > 0:
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
    return DatasetPair(train, test, num_classes)
