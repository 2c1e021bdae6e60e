"""Test-accuracy curves of sam-train runs from their metrics.csv, drawn into a PNG: the code
behind ``scripts/plot_runs.py`` and ``sam-compare --plot``.

One panel per setting (the paper row a run reproduces, see ``sam_train/paper.py``), one colour
per optimizer (SGD, SAM with its rho): a thin line per run (seed) and a thick line for their
mean. The x axis is the epoch. A short run (a few epochs) has a marker on each point; a run
stopped before its configured epochs ends in a cross.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from sam_train.config import register_resolvers
from sam_train.paper import describe, optimizer_label
from sam_train.run_folder import RUN_MARKER, unstarted_jobs_problem

SHORT = 12  # runs of at most this many epochs get a marker on each point


@dataclass
class Curve:
    epochs: np.ndarray
    values: np.ndarray
    planned: int  # the run's trainer.epochs

    @property
    def stopped(self) -> bool:
        return len(self.epochs) > 0 and self.epochs[-1] < self.planned


def read_curve(run_dir: Path, column: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of one metrics.csv column; empty cells (no EMA) are left out."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return np.array([]), np.array([])
    with path.open(newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(column)]
    return np.array([int(r["epoch"]) for r in rows]), np.array([float(r[column]) for r in rows])


def collect(run_dirs: list[Path], column: str) -> dict[str, dict[str, list[Curve]]]:
    """``{setting label: {optimizer label: [curve per run]}}``; unfinished runs included."""
    register_resolvers()
    curves: dict[str, dict[str, list[Curve]]] = defaultdict(lambda: defaultdict(list))
    for run_dir in run_dirs:
        config_file = run_dir / RUN_MARKER
        epochs, values = read_curve(run_dir, column) if config_file.is_file() else ([], [])
        if not len(values):
            why = unstarted_jobs_problem(run_dir) or f"{run_dir}: no {column} in metrics.csv"
            print(f"skipping {why}", file=sys.stderr)
            continue
        cfg = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
        curve = Curve(epochs, values, int(cfg["trainer"]["epochs"]))
        curves[describe(cfg).label][optimizer_label(cfg)].append(curve)
    return curves


def _plot_panel(ax, runs: list[Curve], colour: str, name: str) -> None:
    """A thin line per run, a thick one for their mean over the epochs all of them have."""
    marker = "o" if max(len(c.epochs) for c in runs) <= SHORT else None
    for c in runs:
        ax.plot(c.epochs, c.values, color=colour, lw=0.7, alpha=0.35, marker=marker, ms=3)
        if c.stopped:
            ax.plot(c.epochs[-1:], c.values[-1:], color=colour, marker="x", ms=8, mew=2)
    length = min(len(c.values) for c in runs)
    mean = np.mean([c.values[:length] for c in runs], axis=0)
    label = f"{name} (mean of {len(runs)})" if len(runs) > 1 else name
    ax.plot(runs[0].epochs[:length], mean, color=colour, lw=2, label=label, marker=marker, ms=4)


def plot(curves: dict[str, dict[str, list[Curve]]], out: Path, column: str, title: str) -> None:
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
            _plot_panel(ax, runs, colours[name], name)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel("test top-1 accuracy (%)" if column == "test_acc1" else column)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
