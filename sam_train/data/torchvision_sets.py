"""Fine-tuning data sets of the SAM paper's Table 3 through torchvision's own classes:
Food-101, Oxford-IIIT Pets, Flowers-102, Stanford Cars, FGVC-Aircraft (downloaded into
``dataset.root`` when the machine has network and torchvision can; otherwise one line naming
what to put where).

torchvision keeps these labels privately (a ``_labels`` list, or Stanford Cars' ``_samples``
of (path, label)); :class:`LabelledSplit` exposes them as ``targets`` and the class list the
data set's files declare as ``classes``, like CIFAR, so label noise and the class checks apply.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

import sam_train.data.transforms as T
from sam_train.data.image_folder import error_reason
from sam_train.errors import DatasetError


@dataclass(frozen=True)
class TorchvisionSet:
    cls: type
    splits: tuple[str, str]  # torchvision's names of the training and the test split
    layout: str  # what dataset.root must hold, for the error line
    options: dict[str, Any] = field(default_factory=dict)  # more arguments of ``cls``
    # False where torchvision cannot download (Stanford Cars: its URL is dead and
    # ``download=True`` raises even when the files are there): never asked to.
    downloadable: bool = True
    # The class names the files declare (torchvision's ``classes``, read from them, but for
    # Flowers-102, whose list torchvision fixes at 102 names: see :func:`_flowers_classes`).
    classes: Callable[[Any], list] = lambda base: list(base.classes)


def _flowers_classes(base: Any) -> list:
    """Flowers-102's classes: as many of torchvision's names as the labels file of all three
    splits numbers (102 in the real files; a split alone may lack some)."""
    from scipy.io import loadmat

    labels = loadmat(Path(base._base_folder) / base._file_dict["label"][0], squeeze_me=True)
    return list(base.classes)[: int(np.max(labels["labels"]))]


TORCHVISION_SETS: dict[str, TorchvisionSet] = {
    "food101": TorchvisionSet(
        tv_datasets.Food101,
        ("train", "test"),
        "food-101/meta/{train,test}.json and food-101/images/<class>/<id>.jpg",
    ),
    "oxford_pets": TorchvisionSet(
        tv_datasets.OxfordIIITPet,
        ("trainval", "test"),
        "oxford-iiit-pet/annotations/{trainval,test}.txt and oxford-iiit-pet/images/<id>.jpg",
    ),
    "flowers102": TorchvisionSet(
        tv_datasets.Flowers102,
        ("train", "test"),
        "flowers-102/jpg/image_<NNNNN>.jpg, flowers-102/imagelabels.mat and flowers-102/setid.mat",
        classes=_flowers_classes,
    ),
    "stanford_cars": TorchvisionSet(
        tv_datasets.StanfordCars,
        ("train", "test"),
        "stanford_cars/devkit/{cars_meta,cars_train_annos}.mat, "
        "stanford_cars/cars_test_annos_withlabels.mat and "
        "stanford_cars/{cars_train,cars_test}/<fname>.jpg",
        downloadable=False,
    ),
    "fgvc_aircraft": TorchvisionSet(
        tv_datasets.FGVCAircraft,
        ("trainval", "test"),
        "fgvc-aircraft-2013b/data/variants.txt, "
        "fgvc-aircraft-2013b/data/images_variant_{trainval,test}.txt and "
        "fgvc-aircraft-2013b/data/images/<id>.jpg",
        options={"annotation_level": "variant"},  # 100 variants (70 families, 30 makers)
    ),
}


class LabelledSplit(Dataset):
    """A torchvision split whose labels are a public, replaceable ``targets`` list."""

    def __init__(self, base: Any, classes: list) -> None:
        self.base = base
        self.targets: list[int] = torchvision_labels(base)
        self.classes = classes  # declared by the files, whatever labels this split holds

    @property
    def transform(self) -> Callable | None:
        return self.base.transform

    @transform.setter
    def transform(self, value: Callable | None) -> None:  # sam-analyze swaps pipelines
        from torchvision.datasets.vision import StandardTransform

        self.base.transform = value
        self.base.transforms = StandardTransform(value, self.base.target_transform)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _ = self.base[index]
        return image, self.targets[index]


def torchvision_labels(base: Any) -> list[int]:
    """The labels of a torchvision split without decoding its images: most classes keep them
    in ``_labels``, StanfordCars in ``_samples`` of (path, label)."""
    if hasattr(base, "_labels"):
        return [int(label) for label in base._labels]
    return [int(label) for _path, label in base._samples]


def _unchecked(cls: type) -> type:
    """Flowers-102 checks the md5 of its .mat files; off for converted or test data."""
    return type(f"{cls.__name__}NoChecksum", (cls,), {"_check_integrity": _folder_exists})


def _folder_exists(self: Any) -> bool:
    return Path(self._images_folder).is_dir()


def torchvision_pair(
    name: str,
    root: str,
    image_size: int,
    download: bool,
    verify_checksums: bool,
    options: dict[str, Any] | None = None,
    normalization: T.Normalization = T.IMAGENET_NORMALIZATION,
) -> tuple[LabelledSplit, LabelledSplit]:
    """The training and test splits of ``name`` with the ImageNet-style pipelines
    (``options``: timm's training stages, as for ImageNet)."""
    spec = TORCHVISION_SETS[name]
    cls = spec.cls if verify_checksums or name != "flowers102" else _unchecked(spec.cls)
    train_split, test_split = spec.splits
    download = download and spec.downloadable
    try:
        train = cls(
            root,
            split=train_split,
            transform=T.imagenet_transforms(True, image_size, options, normalization),
            download=download,
            **spec.options,
        )
        test = cls(
            root,
            split=test_split,
            transform=T.imagenet_transforms(False, image_size, normalization=normalization),
            download=download,
            **spec.options,
        )
    except Exception as err:  # RuntimeError (not found), URLError, OSError, scipy's errors
        source = (
            ", or network access to download it"
            if spec.downloadable
            else "; torchvision cannot download it, its URL is dead"
        )
        raise DatasetError(
            f"{name} not found or unreadable under dataset.root={root!r} (expected "
            f"{spec.layout} there{source}): {error_reason(err)}"
        ) from err
    return LabelledSplit(train, spec.classes(train)), LabelledSplit(test, spec.classes(test))
