"""Tiny data sets of random images in the real on-disk formats, for checks that must not
download: the GPU check and the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np


def write_image_folder(root: Path, classes: int = 3, per_class: int = 4, size: int = 40) -> Path:
    """An ImageNet-style tree root/{train,val}/<class>/<n>.png of random images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def write_cifar(root: Path, name: str = "cifar10", per_split: tuple[int, int] = (40, 20)) -> Path:
    """Random CIFAR-10/100 images in torchvision's on-disk pickle layout (CIFAR-10: five
    train batches and one test batch), read by the real data set classes without a download."""
    rng = np.random.default_rng(0)
    classes = 10 if name == "cifar10" else 100
    label_key = "labels" if name == "cifar10" else "fine_labels"
    if name == "cifar10":
        folder = root / "cifar-10-batches-py"
        files = {f"data_batch_{i}": per_split[0] // 5 for i in range(1, 6)}
        files["test_batch"] = per_split[1]
        meta = ("batches.meta", {"label_names": [f"c{i}" for i in range(classes)]})
    else:
        folder = root / "cifar-100-python"
        files = {"train": per_split[0], "test": per_split[1]}
        meta = ("meta", {"fine_label_names": [f"c{i}" for i in range(classes)]})
    folder.mkdir(parents=True, exist_ok=True)
    for filename, count in files.items():
        entry = {
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            label_key: rng.integers(0, classes, size=count).tolist(),
        }
        with open(folder / filename, "wb") as handle:
            pickle.dump(entry, handle)
    with open(folder / meta[0], "wb") as handle:
        pickle.dump(meta[1], handle)
    return root
