"""``sam-export``: a checkpoint's weights as a timm model folder (the Hugging Face hub layout).

    sam-export outputs/run/checkpoints/best.pt --out exported/
    sam-export outputs/run/checkpoints/last.pt --out exported-ema/ --ema

Writes ``model.safetensors`` and timm's ``config.json`` with timm's own ``save_for_hf`` (what
``push_to_hf_hub`` uploads): the architecture, its arguments (``model.kwargs``), the class
names (``label_names``) and a ``pretrained_cfg`` whose input size, mean, std, crop and
interpolation are those of the run's evaluation transform (read from that transform, not from
the architecture's registered defaults). Load it back with timm alone::

    timm.create_model("local-dir:exported", pretrained=True)
    timm.create_model("resnet18", pretrained=True, num_classes=10,
                      pretrained_cfg_overlay=dict(file="exported/model.safetensors"))

sam-train's own CIFAR models (``wrn28_10``, ``pyramidnet272``, ``digits_cnn``, ...) are timm
models registered by ``sam_train.models``: the same files, loadable once ``import
sam_train.models`` has registered them. The test set is rebuilt from the checkpoint's config
(``key=value`` overrides apply, e.g. ``dataset.root=...``) to read its transform and class
names. A bad path or file: one line, exit 2, before anything is written.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sam_train.config.overrides import flag_hint
from sam_train.errors import ArgumentParser, CheckpointError, exit_on_user_error
from sam_train.evaluate import overrides_problem
from sam_train.paths import exit_on_problems, expect_file, expect_folder

WEIGHTS_NAME = "model.safetensors"  # timm's HF_SAFE_WEIGHTS_NAME


def data_config_of(transform: Any, input_size: tuple[int, ...]) -> dict[str, Any]:
    """timm's data config (mean, std, crop_pct, interpolation, input_size) of an evaluation
    transform of this package: a torchvision v2 pipeline ending in Normalize."""
    from torchvision.transforms import v2

    steps = list(getattr(transform, "transforms", [transform]))
    normalize = next((s for s in steps if isinstance(s, v2.Normalize)), None)
    if normalize is None:
        raise CheckpointError(f"the evaluation transform has no Normalize to export: {transform}")
    resize = next((s for s in steps if isinstance(s, v2.Resize)), None)
    crop = next((s for s in steps if isinstance(s, v2.CenterCrop)), None)
    crop_pct = 1.0
    if resize is not None and crop is not None and len(resize.size) == 1:
        crop_pct = crop.size[0] / resize.size[0]  # imagenet_transforms: resize 8/7, crop
    interpolation = resize.interpolation.value if resize is not None else "bilinear"
    return {
        "input_size": tuple(input_size),
        "mean": tuple(float(m) for m in normalize.mean),
        "std": tuple(float(s) for s in normalize.std),
        "crop_pct": crop_pct,
        "interpolation": interpolation,
    }


def export(checkpoint: Path, out: Path, *, ema: bool = False, overrides: list[str] = ()) -> Path:
    """Write ``out/model.safetensors`` and ``out/config.json``; returns ``out``."""
    from omegaconf import OmegaConf
    from timm.models import save_for_hf

    from sam_train.checkpoint import current_umask
    from sam_train.evaluate import load_checkpoint_for_inference

    loaded = load_checkpoint_for_inference(checkpoint, overrides)
    model = loaded.ema_model(checkpoint) if ema else loaded.model
    sample = loaded.data.test[0][0]
    save_for_hf(
        model,
        str(out),
        model_config={"label_names": loaded.names},
        model_args=OmegaConf.to_container(loaded.cfg.model.kwargs, resolve=True),
        safe_serialization=True,
        data_config=data_config_of(loaded.data.test.transform, tuple(sample.shape)),
    )
    (out / WEIGHTS_NAME).chmod(0o666 & ~current_umask())  # safetensors writes it 0600
    return out


def out_problem(out: Path) -> str | None:
    """Why ``out`` cannot take the export (None: it is new or empty): an export never mixes two
    models' files."""
    problem = expect_folder(out, "a new folder for the export (--out)", exists=False)
    if problem is None and out.is_dir() and any(out.iterdir()):
        return f"{out} is not empty, expected a new folder for the export (--out)"
    return problem


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="sam-export",
        description="A sam-train checkpoint as safetensors weights and timm's config.json.",
        flag_hint=flag_hint,
    )
    parser.add_argument("checkpoint", type=Path, metavar="CHECKPOINT")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--out", type=Path, required=True, help="a new folder to write")
    parser.add_argument("--ema", action="store_true", help="export the EMA weights")
    return parser.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    paths = [expect_file(args.checkpoint), out_problem(args.out)]
    exit_on_problems("sam-export", [*paths, overrides_problem(args.overrides, "sam-export")])

    def run() -> None:
        out = export(args.checkpoint, args.out, ema=args.ema, overrides=args.overrides)
        print(f"wrote {out / WEIGHTS_NAME} and {out / 'config.json'}")

    exit_on_user_error("sam-export", run)


if __name__ == "__main__":
    main()
