"""The Table 3 fine-tuning sets through torchvision's classes, on tiny fakes written in each
data set's on-disk format (what torchvision's Food101, OxfordIIITPet, Flowers102, StanfordCars
and FGVCAircraft read)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_cifar
from torchvision_fakes import CLASSES, PER_SPLIT, WRITERS

from sam_train.config.schema import DATA_SPECS
from sam_train.data import build_datasets
from sam_train.data.torchvision_sets import TORCHVISION_SETS
from sam_train.errors import DatasetError


def test_every_torchvision_set_is_a_declared_data_set_with_a_fake():
    assert set(TORCHVISION_SETS) <= set(DATA_SPECS) and set(WRITERS) == set(TORCHVISION_SETS)


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_tiny_fake_loads_with_labels_noise_and_the_imagenet_pipeline(tmp_path, name):
    WRITERS[name](tmp_path, np.random.default_rng(0))
    pair = build_datasets(
        name,
        root=str(tmp_path),
        num_classes=CLASSES,
        image_size=16,
        download=False,
        verify_checksums=False,
        label_noise=1.0,
        seed=0,
    )
    assert len(pair.train) == len(pair.test) == CLASSES * PER_SPLIT
    image, label = pair.test[0]
    assert tuple(image.shape) == (3, 16, 16) and 0 <= label < CLASSES
    # targets are torchvision's own labels (what its __getitem__ returns), each class once
    # per image of it, and as many class names as classes
    for split in (pair.train, pair.test):
        assert len(split.classes) == CLASSES
    expected = [pair.test.base[i][1] for i in range(len(pair.test))]
    assert pair.test.targets == expected
    assert Counter(expected) == dict.fromkeys(range(CLASSES), PER_SPLIT)
    clean = [pair.train.base[i][1] for i in range(len(pair.train))]
    noisy = [pair.train[i][1] for i in range(len(pair.train))]
    assert noisy == pair.train.targets and noisy != clean  # every label resampled elsewhere


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_a_missing_folder_is_one_line_naming_the_files(tmp_path, name):
    with pytest.raises(DatasetError) as caught:
        build_datasets(name, root=str(tmp_path), num_classes=CLASSES, download=False)
    message = str(caught.value)
    assert "\n" not in message and TORCHVISION_SETS[name].layout in message


def test_stanford_cars_is_read_but_never_downloaded(tmp_path):
    """torchvision's StanfordCars raises for download=True (its URL is dead) even with the files
    in place: dataset.download=true, the default, must still read them, and a missing folder
    must say where to put the files rather than ask for network."""
    with pytest.raises(DatasetError) as caught:
        build_datasets("stanford_cars", root=str(tmp_path), num_classes=CLASSES, download=True)
    message = str(caught.value)
    assert "stanford_cars/devkit/{cars_meta,cars_train_annos}.mat" in message
    assert "cannot download it" in message and "network" not in message
    WRITERS["stanford_cars"](tmp_path, np.random.default_rng(0))
    pair = build_datasets(
        "stanford_cars", root=str(tmp_path), num_classes=CLASSES, image_size=16, download=True
    )
    assert len(pair.train) == len(pair.test) == CLASSES * PER_SPLIT
    assert pair.train.classes == [f"Maker Model{c} 20{c:02d}" for c in range(CLASSES)]


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
@pytest.mark.parametrize("num_classes", [CLASSES - 1, CLASSES + 1])
def test_another_num_classes_than_the_files_declare_is_refused(tmp_path, name, num_classes):
    """Fewer declared classes than the outputs are refused like more (the fakes declare 3:
    Flowers-102 in its labels file, the others in their class lists)."""
    WRITERS[name](tmp_path, np.random.default_rng(0))
    with pytest.raises(DatasetError) as caught:
        build_datasets(
            name,
            root=str(tmp_path),
            num_classes=num_classes,
            download=False,
            verify_checksums=False,
        )
    assert str(caught.value) == (
        f"{name} has {CLASSES} classes but dataset.num_classes={num_classes}: "
        f"set dataset.num_classes={CLASSES}"
    )


def _finetune_smoke(cli_in_process, tmp_path: Path, name: str, classes: int) -> dict:
    """The preset with a tiny ViT instead of the hub's ViT-B/16 (no network here), on the data
    under tmp_path/data; its results.json."""
    code, err = cli_in_process(
        [
            "experiment=finetune_vit_sam",
            f"dataset={name}",
            f"dataset.root={tmp_path / 'data'}",
            f"dataset.num_classes={classes}",
            "dataset.verify_checksums=false",
            "dataset.download=false",
            "dataset.image_size=16",
            "model.name=vit_tiny_patch16_224",
            "model.pretrained=false",
            "+model.kwargs={img_size: 16, patch_size: 8, depth: 2, embed_dim: 32, num_heads: 2}",
            "trainer.epochs=1",
            "trainer.batch_size=4",
            "trainer.num_workers=0",
            "trainer.device=cpu",
            "logger=none",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]
    )
    assert code == 0, err
    return json.loads((tmp_path / "run" / "results.json").read_text())


@pytest.mark.parametrize("name", sorted(TORCHVISION_SETS))
def test_finetune_preset_smoke_runs_on_each_fake(cli_in_process, tmp_path, name):
    WRITERS[name](tmp_path / "data", np.random.default_rng(0))
    results = _finetune_smoke(cli_in_process, tmp_path, name, CLASSES)
    assert results["test_images"] == CLASSES * PER_SPLIT


def test_finetune_preset_smoke_runs_on_resized_cifar(cli_in_process, tmp_path):
    """CIFAR at the model's size (not its own 32 px) through the upsampling pipelines."""
    write_cifar(tmp_path / "data", "cifar10", per_split=(40, 20))
    results = _finetune_smoke(cli_in_process, tmp_path, "cifar10", 10)
    assert results["test_images"] == 20
