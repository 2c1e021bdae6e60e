"""``sam-eval``: score checkpoints on their test set, like ``timm validate.py``.

    sam-eval outputs/run/checkpoints/best.pt
    sam-eval outputs/run/checkpoints/best.pt --per-class       # + per-class accuracy, confusion
    sam-eval a/checkpoints/best.pt b/checkpoints/best.pt --out cmp trainer.eval_batch_size=512
    torchrun --nproc_per_node=4 -m sam_train.evaluate run/checkpoints/best.pt

Each checkpoint's model and test set are rebuilt from the config it holds, through the
factory that trained it (``key=value`` overrides apply on top, e.g. ``dataset.root=...``);
loss, top-1 and top-5 come from the training loop's own ``evaluate``, and from the EMA
weights too when the checkpoint holds them. Under torchrun each process scores a shard and
the sums are all-reduced. Prints one line per checkpoint and writes one JSON file per
evaluation, named by what was evaluated (``eval/best-step420.json``; overrides add a hash of
them), to ``<run>/eval/`` or ``--out``, so evaluating another checkpoint never replaces an
earlier result. ``--per-class`` adds each class's accuracy and the confusion matrix (rows: true
class, columns: predicted) to the JSON, and draws the matrix into a PNG beside it. A bad file
or override: one line, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sam_train.cli import config_dir
from sam_train.config.overrides import checkpoint_overrides_problem, flag_hint
from sam_train.errors import ArgumentParser, run_entry_point
from sam_train.paths import exit_on_problems, expect_file, expect_folder
from sam_train.run_files import EVAL_DIR
from sam_train.run_folder import CHECKPOINTS_DIR

ANNOTATED = 20  # confusion matrices of at most this many classes get their counts written


def evaluation_flag_hint(name: str, value: str) -> str:
    """``flag_hint``, except that sam-eval's batches are the test loader's: ``--batch-size 8``
    means ``trainer.eval_batch_size=8`` here (``trainer.batch_size`` is training's)."""
    if name == "batch_size":
        return f"write trainer.eval_batch_size={value}"
    return flag_hint(name, value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="sam-eval",
        description="Loss, top-1 and top-5 of sam-train checkpoints on their test sets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        flag_hint=evaluation_flag_hint,
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="CHECKPOINT|key=value",
        help="checkpoint files, and overrides of their configs (e.g. dataset.root=data)",
    )
    parser.add_argument(
        "--out", type=Path, help=f"folder for the results (default: <run>/{EVAL_DIR})"
    )
    parser.add_argument(
        "--per-class",
        action="store_true",
        help="add per-class accuracy and the confusion matrix (JSON and PNG)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_intermixed_args(argv)
    args.overrides, args.checkpoints = split_items(args.items)
    if not args.checkpoints:
        parser.error("give at least one checkpoint")
    out = [expect_folder(args.out, "a folder for the results", exists=False)] if args.out else []
    problems = [*map(expect_file, args.checkpoints), *out]
    exit_on_problems(parser.prog, [*problems, overrides_problem(args.overrides, parser.prog)])
    return args


def overrides_problem(overrides: Sequence[str], prog: str) -> str | None:
    """Why a checkpoint command's ``key=value`` overrides cannot apply (sam-train's own check
    and "did you mean"), before the checkpoint is read; None when they can."""
    return checkpoint_overrides_problem(overrides, config_dir(), prog)


def split_items(items: Sequence[str]) -> tuple[list[str], list[Path]]:
    """(the ``key=value`` overrides, the paths) among a checkpoint command's arguments."""
    overrides = [item for item in items if is_override(item)]
    return overrides, [Path(item) for item in items if item not in overrides]


def is_override(item: str) -> bool:
    """``key=value``, unless it is a path: one that exists, one whose ``=`` comes after a
    folder (``sweep/sam=sam,seed=1/checkpoints/last.pt``, a sweep job's) or a ``.pt`` file, so
    that a mistyped checkpoint or image is answered as a missing file, not as a bad override."""
    key = item.split("=", 1)[0]
    return "=" in item and "/" not in key and not item.endswith(".pt") and not Path(item).exists()


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.pt``), else its folder."""
    parent = checkpoint.parent
    return parent.parent if parent.name == CHECKPOINTS_DIR else parent


def class_names(dataset: Any, num_classes: int) -> list[str]:
    """The data set's class names (torchvision's and ImageFolder's ``classes``), or the class
    indices where it has none (digits)."""
    names = getattr(dataset, "classes", None)
    if names is not None and len(names) == num_classes:
        return [str(name) for name in names]
    return [str(index) for index in range(num_classes)]


def _ema_model(model, state: dict[str, Any], path: Path):
    """A copy of ``model`` with the checkpoint's EMA weights, or None when it holds none."""
    from sam_train.checkpoint import ema_weights, load_model_state

    weights = ema_weights(state)
    if weights is None:
        return None
    ema_model = copy.deepcopy(model)
    load_model_state(ema_model, weights, path)
    return ema_model


@dataclass
class Loaded:
    """A checkpoint rebuilt for inference: its model (weights loaded), config, raw contents,
    data sets (the test set's ``transform`` is the evaluation transform) and class names."""

    model: Any
    cfg: Any
    state: dict[str, Any]
    data: Any
    names: list[str]

    def ema_model(self, path: Path):
        """The model with the checkpoint's EMA weights; CheckpointError when it holds none."""
        from sam_train.errors import CheckpointError

        ema = _ema_model(self.model, self.state, path)
        if ema is None:
            raise CheckpointError(f"checkpoint {path} holds no EMA weights (train with ema.decay)")
        return ema


def load_checkpoint_for_inference(path: Path, overrides: Sequence[str], strategy=None) -> Loaded:
    """What sam-eval, sam-export and sam-predict start from, through build.py: the model the
    checkpoint's config builds, its weights, and the test set rebuilt from that config."""
    from sam_train.build import build_data, model_from_checkpoint

    model, cfg, state = model_from_checkpoint(path, strategy, overrides)
    data = build_data(cfg, strategy)
    names = class_names(data.test, cfg.dataset.num_classes)
    return Loaded(model.eval(), cfg, state, data, names)


def per_class(confusion: list[list[int]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Each class's test images and top-1 accuracy (%), from the confusion matrix's rows."""
    return [
        {
            "class": index,
            "name": name,
            "images": sum(row),
            "acc1": 100.0 * row[index] / sum(row) if sum(row) else None,
        }
        for index, (name, row) in enumerate(zip(names, confusion, strict=True))
    ]


def evaluate_checkpoint(
    path: Path, overrides: list[str], strategy, *, with_classes: bool = False
) -> dict[str, Any]:
    """Scores of one checkpoint's weights (and EMA weights) on its rebuilt test set; with
    ``with_classes``, the live weights' per-class accuracy and confusion matrix too."""
    import torch

    from sam_train import checkpoint
    from sam_train.build import build_precision, build_run_loaders
    from sam_train.step import evaluate

    loaded = load_checkpoint_for_inference(path, overrides, strategy)
    model, cfg, state, data = loaded.model, loaded.cfg, loaded.state, loaded.data
    loaders = build_run_loaders(cfg, data, strategy, batch=1)
    # the training loop's autocast; evaluation has no use for fp16's scaler
    precision = build_precision(cfg.trainer.amp, strategy.device, training=False)
    classes = cfg.dataset.num_classes
    confusion = torch.zeros(classes, classes, dtype=torch.int64, device=strategy.device)

    def score(net, matrix=None) -> dict[str, float]:
        return evaluate(
            net,
            loaders.test,
            strategy.device,
            strategy=strategy,
            precision=precision,
            channels_last=cfg.trainer.channels_last,
            confusion=matrix,
        )

    result: dict[str, Any] = {
        "checkpoint": str(path),
        "epochs_trained": state.get(checkpoint.EPOCH),  # completed epochs when it was written
        "global_step": state.get(checkpoint.GLOBAL_STEP),
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "sam": cfg.sam.name,
        **score(model, confusion if with_classes else None),
    }
    ema_model = _ema_model(model, state, path)
    if ema_model is not None:
        result.update({f"ema_{k}": v for k, v in score(ema_model).items() if k != "count"})
    if with_classes:
        result["confusion"] = confusion.tolist()
        result["per_class"] = per_class(result["confusion"], loaded.names)
    return result


def summary_line(result: dict[str, Any]) -> str:
    line = (
        f"{result['checkpoint']}: after {result['epochs_trained']} epochs, {result['count']} "
        f"test images, "
        f"loss {result['loss']:.4f}, top-1 {result['acc1']:.2f}%, top-5 {result['acc5']:.2f}%"
    )
    if "ema_acc1" in result:
        line += (
            f"; EMA loss {result['ema_loss']:.4f}, top-1 {result['ema_acc1']:.2f}%, "
            f"top-5 {result['ema_acc5']:.2f}%"
        )
    if "per_class" in result:
        scored = [c for c in result["per_class"] if c["acc1"] is not None]
        worst = min(scored, key=lambda c: c["acc1"], default=None)
        line += f"; worst class {worst['name']} {worst['acc1']:.2f}%" if worst else ""
    return line


def result_name(result: dict[str, Any], overrides: Sequence[str]) -> str:
    """A file name for one evaluation, from what was evaluated: the checkpoint's name and step
    (best.pt is rewritten as training goes on), and a hash of the overrides, if any."""
    name = f"{Path(result['checkpoint']).stem}-step{result['global_step']}"
    if overrides:
        name += "-" + hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:8]
    return name


def plot_confusion(confusion: list[list[int]], names: Sequence[str], path: Path) -> None:
    """The confusion matrix as a PNG: colour by the share of each true class's images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    counts = np.asarray(confusion)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.35 * len(names), 30)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    if len(names) <= ANNOTATED:
        ticks = range(len(names))
        ax.set_xticks(ticks, names, rotation=90)
        ax.set_yticks(ticks, names)
        for (row, col), count in np.ndenumerate(counts):
            colour = "white" if shares[row, col] > 0.5 else "black"
            ax.text(col, row, str(count), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_result(
    result: dict[str, Any], args: argparse.Namespace, out: Path, name: str
) -> list[Path]:
    """``<out>/<name>.json`` (and ``<name>-confusion.png``): the files written."""
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": ["sam-eval", *args.argv], "overrides": args.overrides, **result}
    written = [out / f"{name}.json"]
    written[0].write_text(json.dumps(report, indent=2) + "\n")
    if "per_class" in result:
        written.append(out / f"{name}-confusion.png")
        plot_confusion(result["confusion"], [c["name"] for c in result["per_class"]], written[1])
    return written


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Score every checkpoint; rank 0 prints and writes one result file per checkpoint."""
    from sam_train.build import build_strategy
    from sam_train.strategy import process_group

    strategy = build_strategy(args.device)
    try:
        results = [
            evaluate_checkpoint(p, args.overrides, strategy, with_classes=args.per_class)
            for p in args.checkpoints
        ]
        several_runs = len({run_folder_of(p.resolve()) for p in args.checkpoints}) > 1
        if strategy.is_main:
            for path, result in zip(args.checkpoints, results, strict=True):
                print(summary_line(result))
                name = result_name(result, args.overrides)
                if args.out is not None and several_runs:  # one folder: tell the runs apart
                    name = f"{run_folder_of(path).name}-{name}"
                out = args.out or run_folder_of(path) / EVAL_DIR
                for written in write_result(result, args, out, name):
                    print(f"written to {written}")
        return results
    finally:
        process_group.cleanup()


def main(argv: list[str] | None = None) -> None:
    run_entry_point("sam-eval", parse_args, run, argv)


if __name__ == "__main__":
    main()
