"""ImageNet-style folders checked when they are built, and images that fail with their name.

What is cheap is checked at build time: train/ and val/ hold the same class folders (by name),
as many as ``dataset.num_classes``, none empty. Labels come from train/'s class-to-index map,
so a val/ image is labelled by its folder's name, never by the folder's position. Directories
are walked following symlinks (torchvision's way) but each real directory and file is listed
once, so a symlink loop or a linked duplicate cannot multiply images.

Whether an image decodes is known only by decoding it, which costs about as much as one epoch.
So by default a bad image stops training at its first read with ``DatasetError("cannot read
image <path>: <reason>")`` (exit 2); ``verify=True`` (``dataset.verify=true``) decodes every
file once at build time and refuses the first bad one before any step is taken. PIL's
``Image.verify()`` would be cheaper but passes truncated JPEGs, the most common damage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image
from torchvision import datasets as tv_datasets
from torchvision.datasets.folder import IMG_EXTENSIONS

from sam_train.errors import DatasetError

SHOWN_NAMES = 5  # class names listed in a mismatch message before "... and N more"
VERIFY_CHUNK = 1024  # paths handed to the verification threads at a time


def read_image(path: str) -> Image.Image:
    """The RGB image at ``path``; any decoding failure is a one-line ``DatasetError``.

    PIL reports damaged data as OSError, SyntaxError, ValueError, zlib.error, struct.error,
    EOFError, ... depending on the format and the byte hit, so every exception is caught here,
    around the decoding only.
    """
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as err:  # every decoding failure (see the docstring)
        raise DatasetError(f"cannot read image {path}: {error_reason(err)}") from err


def error_reason(err: BaseException) -> str:
    """The first line of ``err``'s message (its type when it has none), for one-line errors."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0].strip() if lines else type(err).__name__


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the class folders in ``folder`` (refused when there are none)."""
    names = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not names:
        raise DatasetError(f"no class folders in {folder} (expected {folder}/<class>/<image>)")
    return names


def check_same_classes(train: Path, train_names: list[str], val: Path) -> None:
    """Refuse a val/ whose class folders differ by name from train/'s, listing the differences."""
    val_names = class_folders(val)
    missing = sorted(set(train_names) - set(val_names))
    extra = sorted(set(val_names) - set(train_names))
    if missing or extra:
        found = {"missing": missing, "extra": extra}
        parts = [f"{label} {_shorten(names)}" for label, names in found.items() if names]
        raise DatasetError(f"class folders of {val} differ from {train}: {'; '.join(parts)}")


def _shorten(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    more = len(names) - SHOWN_NAMES
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]"


def list_images(folder: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, label) of every image under each class folder, each real file once."""
    samples = []
    for name, label in sorted(class_to_idx.items(), key=lambda item: item[1]):
        paths = _walk_once(folder / name)
        if not paths:
            extensions = ", ".join(IMG_EXTENSIONS)
            raise DatasetError(
                f"no images in class folder {folder / name} (looked for {extensions})"
            )
        samples += [(path, label) for path in paths]
    return samples


def _walk_once(top: Path) -> list[str]:
    """Image files under ``top``, symlinks followed, each real directory and file visited once.

    ``top``'s ancestors count as visited: a link to one (``..``) is a loop too.
    """
    real_top = Path(os.path.realpath(top))
    seen_dirs = {str(real_top), *map(str, real_top.parents)}
    seen_files: set[str] = set()
    paths = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, name))
            if real not in seen_dirs:
                seen_dirs.add(real)
                kept.append(name)
        dirnames[:] = kept  # os.walk descends only into these
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            real = os.path.realpath(path)
            if name.lower().endswith(IMG_EXTENSIONS) and real not in seen_files:
                seen_files.add(real)
                paths.append(path)
    return paths


class CheckedImageFolder(tv_datasets.ImageFolder):
    """torchvision's ImageFolder, listed by ``list_images`` and read by ``read_image``.

    ``class_to_idx`` (train/'s, for val/) fixes the labels by class name.
    """

    def __init__(
        self,
        root: Path,
        transform: Callable | None = None,
        class_to_idx: dict[str, int] | None = None,
    ) -> None:
        self._given_classes = class_to_idx
        super().__init__(str(root), transform=transform, loader=read_image)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        if self._given_classes is not None:
            return sorted(self._given_classes, key=self._given_classes.get), self._given_classes
        names = class_folders(Path(directory))
        return names, {name: index for index, name in enumerate(names)}

    def make_dataset(  # type: ignore[override]  (torchvision's is a staticmethod)
        self, directory: str | Path, class_to_idx: dict[str, int], **_: Any
    ) -> list[tuple[str, int]]:
        return list_images(Path(directory), class_to_idx)


def build_image_folders(
    root: str, num_classes: int, train_transform: Callable, val_transform: Callable
) -> tuple[CheckedImageFolder, CheckedImageFolder]:
    """train/ and val/ under ``root``, their classes checked against each other and the config."""
    folders = {split: Path(root) / split for split in ("train", "val")}
    missing = [str(path) for path in folders.values() if not path.is_dir()]
    if missing:
        raise DatasetError(
            f"imagenet folder missing under dataset.root={root!r}: {', '.join(missing)} "
            "(expected train/<class>/<image> and val/<class>/<image>)"
        )
    names = class_folders(folders["train"])
    if len(names) != num_classes:  # labels past the outputs, or outputs never trained
        raise DatasetError(
            f"{folders['train']} has {len(names)} class folders but "
            f"dataset.num_classes={num_classes}: set dataset.num_classes={len(names)}"
        )
    check_same_classes(folders["train"], names, folders["val"])
    train = CheckedImageFolder(folders["train"], train_transform)
    val = CheckedImageFolder(folders["val"], val_transform, class_to_idx=train.class_to_idx)
    return train, val


def verify_images(paths: Sequence[str], workers: int | None = None) -> None:
    """Decode every image once (``dataset.verify=true``); the first bad one, in order, is refused.

    Threads suffice, as PIL releases the GIL while it decodes; paths go to the pool a chunk at a
    time so a million-image list does not become a million pending futures.
    """
    workers = workers or min(32, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for start in range(0, len(paths), VERIFY_CHUNK):
            for _ in pool.map(_decode, paths[start : start + VERIFY_CHUNK]):
                pass


def _decode(path: str) -> None:
    read_image(path).close()
