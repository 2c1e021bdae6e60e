"""Draw test-accuracy curves of sam-train runs from their TensorBoard events into a PNG.

    python scripts/plot_runs.py multirun/noisy_digits/*/ --out docs/noisy_digits.png

One panel per setting (the paper row a run reproduces, see ``sam_train/paper.py``), one colour
per optimizer (SGD, SAM with its rho): a thin line per run (seed) and a thick line for their
mean. ``--tag`` picks another scalar (``test/loss``, ``train/acc1``, ...). The x axis counts
evaluations, one per epoch.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sam_train.config import register_resolvers  # noqa: E402
from sam_train.paper import describe, optimizer_label  # noqa: E402


def read_scalars(run_dir: Path, tag: str) -> np.ndarray:
    """The values of one scalar tag over all event files of a run, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return np.array([])
    return np.array([event.value for event in sorted(events.Scalars(tag), key=lambda e: e.step)])


def collect(run_dirs: list[Path], tag: str) -> dict[str, dict[str, list[np.ndarray]]]:
    """``{setting label: {optimizer label: [curve per run]}}`` of the finished runs."""
    register_resolvers()
    curves: dict[str, dict[str, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in run_dirs:
        config_file = run_dir / ".hydra" / "config.yaml"
        finished = config_file.is_file() and (run_dir / "results.json").is_file()
        values = read_scalars(run_dir, tag) if finished else np.array([])
        if not len(values):
            print(f"plot_runs: skipping {run_dir}: unfinished, or no {tag} events", file=sys.stderr)
            continue
        cfg = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        curves[describe(cfg).label][optimizer_label(cfg)].append(values)
    return curves


def plot(curves: dict[str, dict[str, list[np.ndarray]]], out: Path, tag: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted(curves)
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False, sharey=True
    )
    optimizers = sorted(
        {name for panel in curves.values() for name in panel}, key=lambda n: (n != "SGD", n)
    )
    colours = {name: f"C{i}" for i, name in enumerate(optimizers)}
    for ax, panel in zip(axes[0], panels, strict=True):
        for name, runs in sorted(curves[panel].items(), key=lambda item: optimizers.index(item[0])):
            for values in runs:
                ax.plot(
                    np.arange(1, len(values) + 1), values, color=colours[name], lw=0.7, alpha=0.35
                )
            length = min(len(v) for v in runs)
            mean = np.mean([v[:length] for v in runs], axis=0)
            label = f"{name} (mean of {len(runs)})" if len(runs) > 1 else name
            ax.plot(np.arange(1, length + 1), mean, color=colours[name], lw=2, label=label)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("test top-1 accuracy (%)" if tag == "test/acc1" else tag)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--tag", default="test/acc1", help="TensorBoard scalar (default test/acc1)")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    curves = collect(args.run_dirs, args.tag)
    if not curves:
        print(f"plot_runs: error: no run among the given folders has {args.tag}", file=sys.stderr)
        return 2
    plot(curves, args.out, args.tag, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
