"""Damaged or mismatched data sets stop with one line naming the folder or file.

Checked when the data set is built: train/ and val/ class folders (by name), the class count,
symlink loops, CIFAR labels (range and count) and pickles; images, at their first read or,
with ``verify=True``, at build time. The fuzz tests damage files at random and require that
building and iterating either succeeds or raises such a ``DatasetError``.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import build_cifar, write_cifar, write_image_folder
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from sam_train.data import DatasetError, build_datasets, build_loaders
from sam_train.data.image_folder import CheckedImageFolder

CLASSES = 3
CIFAR = {"cifar10": CIFAR10, "cifar100": CIFAR100}
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def one_line_naming(err: pytest.ExceptionInfo, *paths: Path | str) -> str:
    """The error's message, after checking it is one line that names every path."""
    message = str(err.value)
    assert "\n" not in message, message
    for path in paths:
        assert str(path) in message, message
    return message


def build_imagenet(root: Path, **kwargs):
    return build_datasets(
        "imagenet",
        root=str(root),
        num_classes=kwargs.pop("num_classes", CLASSES),
        image_size=16,
        **kwargs,
    )


def iterate(pair, num_workers: int = 0) -> None:
    """One pass over both loaders; the labels must be usable by a loss of ``num_classes``."""
    loaders = build_loaders(
        pair.train, pair.test, batch_size=4, eval_batch_size=4, num_workers=num_workers, seed=0
    )
    try:
        for loader in (loaders.train, loaders.test):
            for _images, labels in loader:
                assert labels.min() >= 0 and labels.max() < pair.num_classes
    finally:  # persistent workers left to the garbage collector take ~10 s to join
        for loader in (loaders.train, loaders.test):
            if getattr(loader, "_iterator", None) is not None:
                loader._iterator._shutdown_workers()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imagenet", classes=CLASSES, per_class=4, size=16)


def class_dir(root: Path, split: str, index: int) -> Path:
    return root / split / f"n{index:08d}"


def save_jpeg(path: Path, size: int = 48) -> Path:
    pixels = np.random.default_rng(1).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")
    return path


# ---------------------------------------------------------------- ImageFolder: class folders


def test_val_missing_a_class_names_it_and_both_folders(folder):
    shutil.rmtree(class_dir(folder, "val", 2))
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder)
    message = one_line_naming(err, folder / "val", folder / "train")
    assert "missing [n00000002]" in message and "extra" not in message


def test_val_extra_class_is_named(folder):
    extra = folder / "val" / "n99999999"
    shutil.copytree(class_dir(folder, "val", 0), extra)
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder)
    message = one_line_naming(err, folder / "val", folder / "train")
    assert "extra [n99999999]" in message and "missing" not in message


def test_val_class_named_differently_is_refused_not_matched_by_position(folder):
    class_dir(folder, "val", 1).rename(folder / "val" / "cat")
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder)
    message = one_line_naming(err, folder / "val")
    assert "missing [n00000001]" in message and "extra [cat]" in message


def test_many_mismatched_classes_are_summarized_on_one_line(folder):
    for index in range(8):
        (folder / "val" / f"other{index}").mkdir()
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder)
    assert "... and 3 more" in one_line_naming(err, folder / "val")


def test_labels_come_from_the_given_class_map_by_name(folder):
    reversed_map = {f"n{i:08d}": CLASSES - 1 - i for i in range(CLASSES)}
    val = CheckedImageFolder(folder / "val", class_to_idx=reversed_map)
    assert val.class_to_idx == reversed_map
    assert all(label == reversed_map[Path(path).parent.name] for path, label in val.samples)
    pair = build_imagenet(folder)
    assert pair.test.class_to_idx == pair.train.class_to_idx


def test_more_class_folders_than_num_classes_are_refused(folder):
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder, num_classes=CLASSES - 1)
    one_line_naming(err, folder / "train", f"dataset.num_classes={CLASSES - 1}")


def test_fewer_class_folders_than_num_classes_are_refused(folder):
    """Issue 25: outputs that no label trains are a mismatch too, as the README says."""
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder, num_classes=CLASSES + 1)
    one_line_naming(err, folder / "train", f"dataset.num_classes={CLASSES + 1}")


@pytest.mark.parametrize("num_classes", [9, 11])
def test_cifar_under_another_num_classes_is_refused(tiny_cifar10, num_classes):
    """The same rule for every data set with a class list (CIFAR's, torchvision's)."""
    root = str(tiny_cifar10)
    with pytest.raises(DatasetError) as err:
        build_datasets("cifar10", root=root, num_classes=num_classes, verify_checksums=False)
    one_line_naming(err, f"dataset.num_classes={num_classes}")


def test_empty_class_folder_is_named(folder):
    for image in class_dir(folder, "train", 1).iterdir():
        image.unlink()
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder)
    one_line_naming(err, class_dir(folder, "train", 1))


def test_symlink_loops_and_linked_duplicates_add_no_images(folder):
    target = class_dir(folder, "train", 0)
    os.symlink(".", target / "loop")  # a loop: torchvision would walk it until ELOOP
    os.symlink("..", target / "up")  # a loop through the parent
    extra = target / "more"
    extra.mkdir()
    save_jpeg(extra / "a.jpg")
    os.symlink("more", target / "same_as_more")  # the same real folder twice
    os.symlink(extra / "a.jpg", target / "a_again.jpg")  # the same real file twice
    pair = build_imagenet(folder)
    assert len(pair.train) == CLASSES * 4 + 1
    assert len({os.path.realpath(path) for path, _ in pair.train.samples}) == len(pair.train)


# ---------------------------------------------------------------- unreadable images


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def damage_empty(path: Path) -> None:
    path.write_bytes(b"")


def damage_not_an_image(path: Path) -> None:
    path.write_text("this is not an image\n")


@pytest.mark.parametrize("damage", [damage_truncate, damage_empty, damage_not_an_image])
def test_bad_image_fails_at_first_read_naming_it(folder, damage):
    bad = save_jpeg(class_dir(folder, "train", 1) / "photo.jpg")
    damage(bad)
    pair = build_imagenet(folder)  # verify=False: nothing is decoded at build time
    with pytest.raises(DatasetError) as err:
        iterate(pair)
    assert one_line_naming(err, bad).startswith(f"cannot read image {bad}: ")


def test_bad_image_in_a_worker_process_arrives_as_the_same_one_line(folder):
    bad = save_jpeg(class_dir(folder, "val", 2) / "photo.jpg")
    damage_truncate(bad)
    with pytest.raises(DatasetError) as err:
        iterate(build_imagenet(folder), num_workers=2)
    assert one_line_naming(err, bad).startswith(f"cannot read image {bad}: ")


def test_verify_refuses_the_first_bad_image_at_build(folder):
    first = save_jpeg(class_dir(folder, "train", 0) / "x.jpg")
    second = class_dir(folder, "train", 2) / "1.png"
    damage_truncate(first)  # PIL's Image.verify() would pass this truncated JPEG
    damage_empty(second)
    build_imagenet(folder)  # without verification the build itself succeeds
    with pytest.raises(DatasetError) as err:
        build_imagenet(folder, verify=True)
    assert str(second) not in one_line_naming(err, first)


def test_verify_passes_a_sound_folder(folder):
    pair = build_imagenet(folder, verify=True)
    iterate(pair)
    assert len(pair.train) == len(pair.test) == CLASSES * 4


# ---------------------------------------------------------------- CIFAR batches


def cifar_root(tmp_path: Path, name: str) -> Path:
    return write_cifar(tmp_path / "data", name)


def edit_batch(path: Path, edit) -> None:
    with open(path, "rb") as handle:
        entry = pickle.load(handle)
    key = "labels" if "labels" in entry else "fine_labels"
    entry[key] = edit(list(entry[key]))
    with open(path, "wb") as handle:
        pickle.dump(entry, handle)


@pytest.mark.parametrize(
    ("name", "file", "edit", "expected"),
    [
        ("cifar10", "data_batch_3", lambda labels: [*labels[:-1], 10], "label 10 outside [0, 10)"),
        ("cifar10", "test_batch", lambda labels: [-1, *labels[1:]], "label -1 outside [0, 10)"),
        ("cifar100", "train", lambda labels: [100, *labels[1:]], "label 100 outside [0, 100)"),
        ("cifar10", "data_batch_2", lambda labels: labels[:-3], "8 images but 5 labels"),
        ("cifar100", "test", lambda labels: [*labels, 1], "20 images but 21 labels"),
        ("cifar10", "data_batch_1", lambda labels: [0.5] * len(labels), "not a list of integers"),
    ],
)
def test_cifar_bad_labels_name_the_batch_file(tmp_path, name, file, edit, expected):
    root = cifar_root(tmp_path, name)
    path = root / CIFAR[name].base_folder / file
    edit_batch(path, edit)
    with pytest.raises(DatasetError) as err:
        build_cifar(root, name)
    assert expected in one_line_naming(err, path)


@pytest.mark.parametrize("verify_checksums", [False, True])
@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage that is no pickle"])
def test_cifar_unreadable_pickle_names_the_file(tmp_path, content, verify_checksums):
    root = cifar_root(tmp_path, "cifar10")
    path = root / CIFAR10.base_folder / "data_batch_4"
    path.write_bytes(content)
    with pytest.raises(DatasetError) as err:
        build_cifar(root, "cifar10", verify_checksums=verify_checksums)
    assert "not a readable CIFAR pickle" in one_line_naming(err, path)


def test_cifar_meta_without_class_names_is_named(tmp_path):
    root = cifar_root(tmp_path, "cifar10")
    meta = root / CIFAR10.base_folder / "batches.meta"
    meta.write_bytes(pickle.dumps({"something": "else"}))
    with pytest.raises(DatasetError) as err:
        build_cifar(root, "cifar10")
    assert "label_names" in one_line_naming(err, meta)


# ---------------------------------------------------------------- fuzz


def damage_at_random(path: Path, rng: np.random.Generator) -> None:
    """One byte changed, random bytes over a span, a truncation, or an empty file.

    Half the changes fall near the end, where a CIFAR pickle keeps its labels.
    """
    data = bytearray(path.read_bytes())
    kind = int(rng.integers(4))
    if kind < 2 and data:
        low = max(len(data) - 32, 0) if rng.random() < 0.5 else 0
        start = int(rng.integers(low, len(data)))
        length = 1 if kind == 0 else int(rng.integers(2, 65))
        data[start : start + length] = rng.integers(0, 256, size=length, dtype=np.uint8).tobytes()
    elif kind == 2:
        data = data[: int(rng.integers(0, max(len(data), 1)))]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


def expect_success_or_dataset_error(root: Path, build) -> None:
    try:
        iterate(build())
    except DatasetError as err:
        message = str(err)
        assert "\n" not in message and str(root) in message, message


@pytest.mark.parametrize("seed", range(40))
def test_fuzz_image_folder(tmp_path, seed):
    rng = np.random.default_rng(seed)
    root = write_image_folder(tmp_path / "imagenet", classes=CLASSES, per_class=2, size=16)
    for index in range(CLASSES):  # JPEGs too, which fail differently from PNGs
        save_jpeg(class_dir(root, "train", index) / "photo.jpg", size=24)
    images = sorted(root.rglob("*.*g"))
    for index in rng.choice(len(images), size=int(rng.integers(1, 4)), replace=False):
        damage_at_random(images[index], rng)
    verify = bool(rng.integers(2))
    expect_success_or_dataset_error(root, lambda: build_imagenet(root, verify=verify))


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
@pytest.mark.parametrize("seed", range(30))
def test_fuzz_cifar_batches(tmp_path, name, seed):
    rng = np.random.default_rng(seed)
    root = cifar_root(tmp_path, name)
    base = CIFAR[name]
    files = [file for file, _md5 in [*base.train_list, *base.test_list]] + [base.meta["filename"]]
    for index in rng.choice(len(files), size=int(rng.integers(1, 3)), replace=False):
        damage_at_random(root / CIFAR[name].base_folder / files[index], rng)
    expect_success_or_dataset_error(root, lambda: build_cifar(root, name))
