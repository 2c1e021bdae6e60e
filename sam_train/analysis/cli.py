"""``sam-analyze``: how flat is a trained network? Sharpness, Hessian and loss landscape.

    sam-analyze outputs/run/checkpoints/last.pt
    sam-analyze sgd/checkpoints/last.pt sam/checkpoints/last.pt --labels SGD SAM --out cmp
    sam-analyze run/checkpoints/last.pt dataset.root=/data      # key=value: as sam-eval's

Each checkpoint holds its resolved config, from which the model and the training set are
rebuilt (same split, same noisy labels). The measures use the first ``--batches`` training
batches (shuffled with ``--seed``, without augmentation), with dropout off and norm layers on
batch statistics as in training (``--norm-statistics running``: eval mode); every run is
measured on the same batches. Writes ``analysis.json``, ``landscape_1d.png`` and
``landscape_2d.png``, and prints a summary. Errors a user can fix end with one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from sam_train.config.overrides import flag_hint
from sam_train.errors import ArgumentParser, run_entry_point
from sam_train.evaluate import overrides_problem, split_items
from sam_train.paths import exit_on_problems, expect_file, expect_folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        flag_hint=flag_hint,
        prog="sam-analyze",
        description="Flatness of trained sam-train checkpoints: SAM sharpness, top Hessian "
        "eigenvalue, Hessian trace, 1-D and 2-D loss landscapes (filter-normalised).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="CHECKPOINT|key=value",
        help="checkpoint files, and overrides of their configs (e.g. dataset.root=data)",
    )
    parser.add_argument("--labels", nargs="+", help="a name per checkpoint (default: sam=...)")
    parser.add_argument(
        "--out", type=Path, help="output folder (default: <run>/analysis for one checkpoint)"
    )
    parser.add_argument("--batches", type=int, default=8, help="training batches to measure on")
    parser.add_argument("--batch-size", type=int, help="default: the run's trainer.batch_size")
    parser.add_argument(
        "--norm-statistics",
        choices=("batch", "running"),
        default="batch",
        help="norm layers use each batch's statistics, as in training (the loss the optimizer "
        "saw), or their running statistics (eval mode, the deployed function)",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=512,
        help="images per forward pass with --norm-statistics running (memory bound)",
    )
    parser.add_argument(
        "--rho", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="sharpness radii"
    )
    parser.add_argument("--ascent-steps", type=int, default=20, help="sharpness ascent steps")
    parser.add_argument("--power-iters", type=int, default=100, help="max power iterations")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="power iteration stop")
    parser.add_argument(
        "--trace-samples", type=int, default=0, help="Hutchinson samples (0: no trace)"
    )
    parser.add_argument("--points", type=int, default=41, help="points of the 1-D landscape")
    parser.add_argument("--grid", type=int, default=21, help="grid side of the 2-D landscape")
    parser.add_argument("--span", type=float, default=1.0, help="landscape coefficient range")
    parser.add_argument("--no-landscape", action="store_true", help="skip the landscapes")
    parser.add_argument("--data-root", help="override dataset.root of the checkpoints")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="batches, directions, vectors")
    args = parser.parse_intermixed_args(argv)
    args.overrides, args.checkpoints = split_items(args.items)
    _check_options(parser, args)
    _check_paths(parser.prog, args)
    return args


def _check_options(parser: ArgumentParser, args: argparse.Namespace) -> None:
    """Numbers in range, a label per checkpoint, ``--out`` for several: argparse's one line."""
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        parser.error(f"--labels needs {len(args.checkpoints)} names, got {len(args.labels)}")
    if args.out is None and len(args.checkpoints) > 1:
        parser.error("several checkpoints need --out")
    for name in ("batches", "chunk_size", "ascent_steps", "power_iters", "points", "grid"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if args.trace_samples < 0 or args.span <= 0 or any(r <= 0 for r in args.rho):
        parser.error("--trace-samples must be >= 0, --span and --rho > 0")


def _check_paths(prog: str, args: argparse.Namespace) -> None:
    """Before any work: checkpoint files, folders where ``--out`` and ``--data-root`` name
    something that is not one, and overrides that cannot apply."""
    folders = {"out": "an output folder", "data_root": "a data folder (--data-root)"}
    given = {key: value for key in folders if (value := getattr(args, key))}
    exit_on_problems(
        prog,
        [
            *map(expect_file, args.checkpoints),
            *(expect_folder(value, folders[key], exists=False) for key, value in given.items()),
            overrides_problem(args.overrides, prog),
        ],
    )


def _load(path: Path, args: argparse.Namespace, device):
    """(model with the checkpoint's weights, its config, the checkpoint), built by the
    factory that trained it."""
    from sam_train.build import model_from_checkpoint
    from sam_train.strategy import SingleProcess

    root = [] if args.data_root is None else [f"dataset.root={json.dumps(args.data_root)}"]
    return model_from_checkpoint(path, SingleProcess(device=device), [*args.overrides, *root])


def _training_batches(cfg, args: argparse.Namespace, device) -> list:
    """The first ``--batches`` training batches, shuffled with ``--seed``, no augmentation."""
    from sam_train.build import build_data
    from sam_train.data import build_loaders

    data = build_data(cfg)
    if hasattr(data.train, "transform") and hasattr(data.test, "transform"):
        data.train.transform = data.test.transform  # measure the function, not augmentation
    batch_size = args.batch_size or cfg.trainer.batch_size
    loader = build_loaders(
        data.train,
        data.test,
        batch_size=min(batch_size, len(data.train)),
        eval_batch_size=batch_size,
        num_workers=0,
        seed=args.seed,
    ).train
    batches = []
    for x, y in loader:
        batches.append((x.to(device), y.to(device)))
        if len(batches) == args.batches:
            break
    return batches


def _coefficients(count: int, span: float) -> list[float]:
    """``count`` evenly spaced values from -span to span (just 0 for one)."""
    if count == 1:
        return [0.0]
    return [span * (2 * i / (count - 1) - 1) for i in range(count)]


class Progress:
    """One line as each stage starts, with the time since this checkpoint's start: the
    measures take minutes on a real network, and a silent command looks hung. On stdout with
    the summary (stderr keeps its one line for an error)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.started = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def __call__(self, stage: str) -> None:
        print(f"sam-analyze: {self.name}: {stage} ({self.elapsed():.1f} s)", flush=True)


def analyze_checkpoint(
    path: Path, args: argparse.Namespace, device, progress: Progress | None = None
) -> dict[str, Any]:
    """Every measure for one checkpoint, as a JSON-ready dict."""
    from torch import nn

    from sam_train.analysis.objective import ModelObjective

    progress = progress or Progress(str(path))
    progress("loading the checkpoint and its training batches")
    model, cfg, state = _load(path, args, device)
    batches = _training_batches(cfg, args, device)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.trainer.label_smoothing)
    objective = ModelObjective(
        model,
        batches,
        criterion,
        batch_statistics=args.norm_statistics == "batch",
        chunk_size=args.chunk_size,
    )
    result: dict[str, Any] = {
        "checkpoint": str(path),
        "epoch": state.get("epoch", -1) + 1,
        "sam": cfg.sam.name,
        "rho_trained": cfg.sam.rho if cfg.sam.name != "none" else 0.0,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "label_noise": cfg.dataset.label_noise,
        "batches": len(batches),
        "images": sum(len(y) for _, y in batches),
        "norm_statistics": args.norm_statistics,
    }
    progress(f"loss and accuracy on {result['images']} images")
    result["loss"], result["acc1"] = objective.value(), objective.accuracy()
    result.update(_measures(objective, args, progress))
    result["seconds"] = round(progress.elapsed(), 2)
    progress("done")
    return result


def _measures(objective, args: argparse.Namespace, progress: Progress) -> dict[str, Any]:
    """Sharpness, the Hessian's top eigenvalue (and trace), the landscapes."""
    import torch

    from sam_train.analysis import measures

    def generator(offset: int) -> torch.Generator:
        return torch.Generator().manual_seed(args.seed * 1000 + offset)

    result: dict[str, Any] = {"sharpness": []}
    for rho in args.rho:
        progress(f"SAM sharpness at rho={rho:g} ({args.ascent_steps} ascent steps)")
        sharpness = measures.sam_sharpness(
            objective, rho, steps=args.ascent_steps, generator=generator(1)
        )
        result["sharpness"].append(sharpness)
    progress(f"top Hessian eigenvalue (at most {args.power_iters} power iterations)")
    result["hessian"] = measures.top_hessian_eigenvalue(
        objective, iterations=args.power_iters, tolerance=args.tolerance, generator=generator(2)
    )
    if args.trace_samples:
        progress(f"Hessian trace ({args.trace_samples} Hutchinson samples)")
        result["trace"] = measures.hessian_trace(
            objective, samples=args.trace_samples, generator=generator(3)
        )
    if args.no_landscape:
        return result
    alphas, grid = _coefficients(args.points, args.span), _coefficients(args.grid, args.span)
    d1 = measures.filter_normalized_direction(objective.params, generator(4))
    d2 = measures.filter_normalized_direction(objective.params, generator(5))
    progress(f"1-D loss landscape ({args.points} points)")
    result["landscape_1d"] = {
        "alphas": alphas,
        "losses": measures.landscape_1d(objective, d1, alphas),
    }
    progress(f"2-D loss landscape ({args.grid}x{args.grid} points)")
    result["landscape_2d"] = {
        "alphas": grid,
        "betas": grid,
        "losses": measures.landscape_2d(objective, d1, d2, grid, grid),
    }
    return result


def _summary(results: dict[str, dict[str, Any]]) -> str:
    rhos = [s["rho"] for s in next(iter(results.values()))["sharpness"]]
    head = ["run", "loss", "acc1", "top eig"] + (
        ["trace"] if "trace" in next(iter(results.values())) else []
    )
    head += [f"sharp@{rho:g}" for rho in rhos]
    rows = [head]
    for label, r in results.items():
        row = [label, f"{r['loss']:.4f}", f"{r['acc1']:.1f}", f"{r['hessian']['eigenvalue']:.3f}"]
        if "trace" in r:
            row.append(f"{r['trace']['trace']:.1f}")
        row += [f"{s['sharpness']:.4f}" for s in r["sharpness"]]
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    from sam_train.analysis.plots import plot_1d, plot_2d
    from sam_train.build import resolve_device

    device = resolve_device(args.device)
    labels = args.labels or [None] * len(args.checkpoints)
    results: dict[str, dict[str, Any]] = {}
    for number, (path, label) in enumerate(zip(args.checkpoints, labels, strict=True), 1):
        name = f"[{number}/{len(args.checkpoints)}] {label or path}"
        result = analyze_checkpoint(path, args, device, Progress(name))
        name = label or f"sam={result['sam']}"
        while name in results:
            name += "'"
        results[name] = result
    out = args.out or args.checkpoints[0].resolve().parent.parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    report = {"command": ["sam-analyze", *args.argv], "runs": results}
    (out / "analysis.json").write_text(json.dumps(report, indent=2) + "\n")
    first = next(iter(results.values()))
    title = f"{first['model']} on {first['dataset']}, {first['images']} training images"
    if "landscape_1d" in first:
        plot_1d(
            {
                k: (r["landscape_1d"]["alphas"], r["landscape_1d"]["losses"])
                for k, r in results.items()
            },
            out / "landscape_1d.png",
            title,
        )
        plot_2d(
            {
                k: (
                    r["landscape_2d"]["alphas"],
                    r["landscape_2d"]["betas"],
                    r["landscape_2d"]["losses"],
                )
                for k, r in results.items()
            },
            out / "landscape_2d.png",
            title,
        )
    print(_summary(results))
    print(f"written to {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    run_entry_point("sam-analyze", parse_args, run, argv)


if __name__ == "__main__":
    main()
