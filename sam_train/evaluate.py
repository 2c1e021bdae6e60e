"""``sam-eval``: score checkpoints on their test set, like ``timm validate.py``.

    sam-eval outputs/run/checkpoints/best.pt
    sam-eval a/checkpoints/best.pt b/checkpoints/best.pt --out cmp trainer.eval_batch_size=512
    torchrun --nproc_per_node=4 -m sam_train.evaluate run/checkpoints/best.pt

Each checkpoint's model and test set are rebuilt from the config it holds, through the
factory that trained it (``key=value`` overrides apply on top, e.g. ``dataset.root=...``);
loss, top-1 and top-5 come from the training loop's own ``evaluate``, and from the EMA
weights too when the checkpoint holds them. Under torchrun each process scores a shard and
the sums are all-reduced. Prints one line per checkpoint and writes ``eval.json`` (to
``--out``, by default the checkpoint's run folder). A bad file or override: one line, exit 2.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

from sam_train.errors import exit_on_user_error
from sam_train.paths import exit_on_problems, expect_file, expect_folder

EVAL_NAME = "eval.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sam-eval",
        description="Loss, top-1 and top-5 of sam-train checkpoints on their test sets.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="CHECKPOINT|key=value",
        help="checkpoint files, and overrides of their configs (e.g. dataset.root=data)",
    )
    parser.add_argument("--out", type=Path, help="folder for eval.json (default: the run's)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_intermixed_args(argv)
    args.overrides = [item for item in args.items if "=" in item and not Path(item).exists()]
    args.checkpoints = [Path(item) for item in args.items if item not in args.overrides]
    if not args.checkpoints:
        parser.error("give at least one checkpoint")
    if args.out is None and len({p.resolve().parent for p in args.checkpoints}) > 1:
        parser.error("checkpoints of several runs need --out")
    out = [expect_folder(args.out, f"a folder for {EVAL_NAME}", exists=False)] if args.out else []
    exit_on_problems(parser.prog, [*map(expect_file, args.checkpoints), *out])
    return args


def _ema_model(model, state: dict[str, Any], path: Path):
    """A copy of ``model`` with the checkpoint's EMA weights, or None when it holds none."""
    from sam_train.checkpoint import ema_weights, load_model_state

    weights = ema_weights(state)
    if weights is None:
        return None
    ema_model = copy.deepcopy(model)
    load_model_state(ema_model, weights, path)
    return ema_model


def evaluate_checkpoint(path: Path, overrides: list[str], strategy) -> dict[str, Any]:
    """Scores of one checkpoint's weights (and EMA weights) on its rebuilt test set."""

    from sam_train import checkpoint
    from sam_train.build import (
        build_data,
        build_precision,
        build_run_loaders,
        model_from_checkpoint,
    )
    from sam_train.step import evaluate

    model, cfg, state = model_from_checkpoint(path, strategy, overrides)
    data = build_data(cfg, strategy)
    loaders = build_run_loaders(cfg, data, strategy, batch=1)
    # the training loop's autocast; evaluation has no use for fp16's scaler
    precision = build_precision(cfg.trainer.amp, strategy.device, training=False)

    def score(net) -> dict[str, float]:
        return evaluate(
            net,
            loaders.test,
            strategy.device,
            strategy=strategy,
            precision=precision,
            channels_last=cfg.trainer.channels_last,
        )

    result: dict[str, Any] = {
        "checkpoint": str(path),
        "epochs_trained": state.get(checkpoint.EPOCH),  # completed epochs when it was written
        "global_step": state.get(checkpoint.GLOBAL_STEP),
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "sam": cfg.sam.name,
        **score(model),
    }
    ema_model = _ema_model(model, state, path)
    if ema_model is not None:
        result.update({f"ema_{k}": v for k, v in score(ema_model).items() if k != "count"})
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
    return line


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Score every checkpoint; rank 0 prints and writes ``eval.json``."""
    from sam_train.build import build_strategy
    from sam_train.strategy import process_group

    strategy = build_strategy(args.device)
    try:
        results = [evaluate_checkpoint(p, args.overrides, strategy) for p in args.checkpoints]
        first = args.checkpoints[0].resolve()
        out = args.out or (
            first.parent.parent if first.parent.name == "checkpoints" else first.parent
        )
        report = {"command": ["sam-eval", *args.argv], "results": results}
        if strategy.is_main:
            for result in results:
                print(summary_line(result))
            out.mkdir(parents=True, exist_ok=True)
            (out / EVAL_NAME).write_text(json.dumps(report, indent=2) + "\n")
            print(f"written to {out / EVAL_NAME}")
        return report
    finally:
        process_group.cleanup()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    exit_on_user_error("sam-eval", lambda: run(args))


if __name__ == "__main__":
    main()
