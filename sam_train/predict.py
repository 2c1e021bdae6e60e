"""``sam-predict``: a checkpoint's top-k classes for image files, into a CSV.

    sam-predict outputs/run/checkpoints/best.pt photos/ cat.jpg --out predictions.csv
    sam-predict run/checkpoints/last.pt images/ --out p.csv --ema --top-k 3 dataset.root=data

Each image goes through the checkpoint's own evaluation transform (the test set's, rebuilt from
the config it holds, so the data set must be readable: ``dataset.root=...`` overrides where)
and the model, in batches; a row per image: its path, then for each of the top k classes its
index, name and softmax probability. A folder stands for the image files in it (recursively,
sorted). Digits' model takes 8x8 grayscale images with bright ink, as scikit-learn's; other
images are converted to RGB (or grayscale for a one-channel model). A bad path: one line,
exit 2, before any work.
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam_train.config.overrides import flag_hint
from sam_train.errors import ArgumentParser, CheckpointError, exit_on_user_error
from sam_train.evaluate import overrides_problem, split_items
from sam_train.paths import exit_on_problems, expect_file, expect_new_file

BATCH = 64


def images_under(path: Path) -> list[Path]:
    """``path`` if it is a file, else the image files under it (sorted)."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)


def image_problem(path: Path) -> str | None:
    """Why ``path`` is neither an image file nor a folder holding some (None: it is one)."""
    if not path.exists():
        return f"{path} does not exist, expected an image file or a folder of images"
    if not images_under(path):
        return f"{path} holds no image file, expected an image file or a folder of images"
    return None


def image_loader(test_set: Any, in_chans: int):
    """``path -> input tensor``: the image decoded the way the test set holds its images, then
    the test set's evaluation transform."""
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    from sam_train.data.datasets import TensorImageDataset

    transform = test_set.transform
    mode = "L" if in_chans == 1 else "RGB"
    if isinstance(test_set, TensorImageDataset):  # digits: float tensors in [0, 1]
        size = tuple(test_set.images.shape[-2:])
        to_tensor = v2.Compose([v2.ToImage(), v2.Resize(size), v2.ToDtype(torch.float32, True)])
        return lambda path: transform(to_tensor(Image.open(path).convert(mode)))
    return lambda path: transform(Image.open(path).convert(mode))


def predict(
    checkpoint: Path,
    images: Sequence[Path],
    *,
    top_k: int = 5,
    ema: bool = False,
    overrides: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """A row per image: ``image``, then ``class_i``, ``name_i``, ``prob_i`` for i = 1..k."""
    import torch

    from sam_train.evaluate import load_checkpoint_for_inference

    loaded = load_checkpoint_for_inference(checkpoint, overrides)
    model = (loaded.ema_model(checkpoint) if ema else loaded.model).eval()
    load = image_loader(loaded.data.test, loaded.cfg.dataset.in_chans)
    k = min(top_k, len(loaded.names))
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), BATCH):
        batch = images[start : start + BATCH]
        try:
            inputs = torch.stack([load(path) for path in batch])
        except OSError as err:  # PIL's UnidentifiedImageError is an OSError
            raise CheckpointError(f"cannot read an image among {batch[0]}...: {err}") from err
        with torch.no_grad():
            probs = model(inputs).float().softmax(dim=1)
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(batch, top.values, top.indices, strict=True):
            row: dict[str, Any] = {"image": str(path)}
            for rank, (p, c) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), 1):
                row |= {f"class_{rank}": c, f"name_{rank}": loaded.names[c], f"prob_{rank}": p}
            rows.append(row)
    return rows


def write_csv(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="sam-predict",
        description="Top-k classes of image files by a sam-train checkpoint, into a CSV.",
        flag_hint=flag_hint,
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    parser.add_argument(
        "items", nargs="+", metavar="IMAGE_OR_FOLDER|key=value", help="images; config overrides"
    )
    parser.add_argument("--out", type=Path, required=True, help="the CSV file to write")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--ema", action="store_true", help="predict with the EMA weights")
    args = parser.parse_intermixed_args(argv)
    args.overrides, args.images = split_items(args.items)
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    exit_on_problems(
        "sam-predict",
        [
            expect_file(args.checkpoint),
            expect_new_file(args.out, "the .csv file to write (--out)"),
            *map(image_problem, args.images),
            overrides_problem(args.overrides, "sam-predict"),
        ],
    )

    def run() -> None:
        images = [image for path in args.images for image in images_under(path)]
        rows = predict(
            args.checkpoint, images, top_k=args.top_k, ema=args.ema, overrides=args.overrides
        )
        write_csv(rows, args.out)
        print(f"wrote {len(rows)} predictions to {args.out}")

    exit_on_user_error("sam-predict", run)


if __name__ == "__main__":
    main()
