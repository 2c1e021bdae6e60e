"""Which CIFAR batch file is bad, for the one-line message when torchvision's loading fails.

torchvision reads the pickled batches without looking inside: a label outside the class range
or a labels list shorter than the images surfaces as an IndexError or a CUDA assert some steps
into training, and a damaged pickle as an UnpicklingError that names no file. ``check_loaded``
looks at what torchvision loaded (cheap, every build); when it, or the loading, fails,
``find_bad_file`` reads the files one by one to name the culprit.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sam_train.data.image_folder import error_reason
from sam_train.errors import DatasetError

CIFAR_IMAGE_BYTES = 3 * 32 * 32  # one row of a batch's ``data``
LABEL_KEYS = ("labels", "fine_labels")  # CIFAR-10, CIFAR-100 (torchvision reads the same keys)


def labels_problem(labels: Any, images: int, num_classes: int) -> str | None:
    """Why ``labels`` cannot label ``images`` images of ``num_classes`` classes (None: they can)."""
    array = np.asarray(labels)
    if array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        return f"labels are not a list of integers (dtype {array.dtype}, shape {array.shape})"
    if len(array) != images:
        return f"{images} images but {len(array)} labels"
    outside = array[(array < 0) | (array >= num_classes)]
    if outside.size:
        return f"label {outside[0]} outside [0, {num_classes}) (dataset.num_classes={num_classes})"
    return None


def check_loaded(dataset: Any, base: type, root: str, num_classes: int) -> None:
    """Refuse a torchvision CIFAR set whose labels do not match its images, naming the file."""
    problem = labels_problem(dataset.targets, len(dataset.data), num_classes)
    if problem is not None:
        find_bad_file(base, root, num_classes)
        folder = Path(root) / base.base_folder
        raise DatasetError(f"CIFAR batches in {folder}: {problem}")


def find_bad_file(base: type, root: str, num_classes: int) -> None:
    """Raise a ``DatasetError`` naming the first present file of ``base`` (a torchvision CIFAR
    class) that is not a readable batch with labels in range; return when all are fine."""
    folder = Path(root) / base.base_folder
    meta = folder / base.meta["filename"]
    if meta.is_file():
        entry = _unpickle(meta)
        names = entry.get(base.meta["key"]) if isinstance(entry, dict) else None
        if not isinstance(names, list) or not names:
            raise DatasetError(f"{meta} has no list of class names {base.meta['key']!r}")
    for name, _md5 in [*base.train_list, *base.test_list]:
        if (folder / name).is_file():
            _check_batch(folder / name, num_classes)


def _check_batch(path: Path, num_classes: int) -> None:
    entry = _unpickle(path)
    if not isinstance(entry, dict) or "data" not in entry:
        raise DatasetError(f"{path} is not a CIFAR batch (no 'data' entry)")
    data = entry["data"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2) or (
        data.shape[1] != CIFAR_IMAGE_BYTES
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise DatasetError(f"{path}: 'data' must be N x {CIFAR_IMAGE_BYTES} uint8, got {shape}")
    key = next((key for key in LABEL_KEYS if key in entry), None)
    if key is None:
        raise DatasetError(f"{path} has no labels (expected one of {', '.join(LABEL_KEYS)})")
    problem = labels_problem(entry[key], len(data), num_classes)
    if problem is not None:
        raise DatasetError(f"{path}: {problem}")


def _unpickle(path: Path) -> Any:
    """The pickled object in ``path``, read as torchvision does (latin1 for Python 2 pickles).

    From bytes, not the open file, so a damaged length field cannot ask for gigabytes.
    """
    try:
        return pickle.loads(path.read_bytes(), encoding="latin1")
    except Exception as err:  # a damaged pickle raises almost any type
        raise DatasetError(f"{path} is not a readable CIFAR pickle: {error_reason(err)}") from err
