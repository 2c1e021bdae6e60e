"""Tiny fakes of the Table 3 fine-tuning sets, written in each data set's on-disk format (what
torchvision's Food101, OxfordIIITPet, Flowers102, StanfordCars and FGVCAircraft read): for
test_torchvision_sets and the paper presets' one-epoch runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES, PER_SPLIT = 3, 4  # images per class and split


def _jpeg(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(path)


def write_food101(root: Path, rng: np.random.Generator) -> None:
    base = root / "food-101"
    for split in ("train", "test"):
        meta = {
            f"dish_{c}": [f"dish_{c}/{split}{i}" for i in range(PER_SPLIT)] for c in range(CLASSES)
        }
        for items in meta.values():
            for item in items:
                _jpeg(base / "images" / f"{item}.jpg", rng)
        (base / "meta").mkdir(parents=True, exist_ok=True)
        (base / "meta" / f"{split}.json").write_text(json.dumps(meta))


def write_oxford_pets(root: Path, rng: np.random.Generator) -> None:
    base = root / "oxford-iiit-pet"
    (base / "annotations").mkdir(parents=True)
    for split in ("trainval", "test"):
        lines = []
        for c in range(CLASSES):
            for i in range(PER_SPLIT):
                image_id = f"breed_{c}_{split}{i}"
                _jpeg(base / "images" / f"{image_id}.jpg", rng)
                lines.append(f"{image_id} {c + 1} {c % 2 + 1} 1")
        (base / "annotations" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def write_flowers102(root: Path, rng: np.random.Generator) -> None:
    from scipy.io import savemat

    base = root / "flowers-102"
    count = 3 * CLASSES * PER_SPLIT  # train, val, test
    labels = np.tile(np.arange(1, CLASSES + 1), count // CLASSES)
    for image_id in range(1, count + 1):
        _jpeg(base / "jpg" / f"image_{image_id:05d}.jpg", rng)
    savemat(base / "imagelabels.mat", {"labels": labels})
    ids = np.arange(1, count + 1).reshape(3, -1)
    savemat(base / "setid.mat", {"trnid": ids[0], "valid": ids[1], "tstid": ids[2]})


def write_stanford_cars(root: Path, rng: np.random.Generator) -> None:
    """The devkit's .mat files as scipy writes MATLAB structs: ``annotations`` records with
    the bounding box, a 1-based ``class`` and the image's ``fname``; ``class_names`` cells."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    (base / "devkit").mkdir(parents=True)
    names = np.array([f"Maker Model{c} 20{c:02d}" for c in range(CLASSES)], dtype=object)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names[None]})
    fields = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")
    annotations = {
        "train": base / "devkit" / "cars_train_annos.mat",
        "test": base / "cars_test_annos_withlabels.mat",
    }
    for split, path in annotations.items():
        records = np.zeros((1, CLASSES * PER_SPLIT), dtype=[(f, object) for f in fields])
        for i in range(CLASSES * PER_SPLIT):
            fname = f"{i + 1:05d}.jpg"
            _jpeg(base / f"cars_{split}" / fname, rng)
            records[0, i] = (1, 1, 20, 20, np.uint8(CLASSES - i % CLASSES), fname)
        savemat(path, {"annotations": records})


def write_fgvc_aircraft(root: Path, rng: np.random.Generator) -> None:
    """fgvc-aircraft-2013b/data as the archive unpacks: the variant names (spaces and slashes
    included, as in the real list) and one "<image id> <variant>" line per image."""
    base = root / "fgvc-aircraft-2013b" / "data"
    variants = ["707-320", "Cessna 172", "F-16A/B"][:CLASSES]
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("\n".join(variants) + "\n")
    image_id = 1000000
    for split in ("trainval", "test"):
        lines = []
        for c in range(CLASSES):
            for _ in range(PER_SPLIT):
                image_id += 1
                _jpeg(base / "images" / f"{image_id}.jpg", rng)
                lines.append(f"{image_id} {variants[c]}")
        (base / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")


WRITERS = {
    "food101": write_food101,
    "oxford_pets": write_oxford_pets,
    "flowers102": write_flowers102,
    "stanford_cars": write_stanford_cars,
    "fgvc_aircraft": write_fgvc_aircraft,
}
