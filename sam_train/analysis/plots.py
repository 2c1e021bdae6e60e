"""Loss-landscape figures. ``matplotlib.figure.Figure`` directly: no pyplot, no display, no
global backend switch in the caller's process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure


def plot_1d(curves: dict[str, tuple[list[float], list[float]]], path: Path, title: str) -> Path:
    """One line per run: loss against the coefficient along its filter-normalised direction."""
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.subplots()
    for label, (alphas, losses) in curves.items():
        ax.plot(alphas, losses, marker=".", label=label)
    ax.set_xlabel("step along a filter-normalised random direction")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)
    return path


def plot_2d(
    surfaces: dict[str, tuple[list[float], list[float], list[list[float]]]],
    path: Path,
    title: str,
) -> Path:
    """Filled contours of log10 loss per run, side by side, on one colour scale."""
    logs = {label: np.log10(np.asarray(z)) for label, (_, _, z) in surfaces.items()}
    everything = np.concatenate([z.ravel() for z in logs.values()])
    levels = np.linspace(everything.min(), everything.max(), 31)
    fig = Figure(figsize=(4.4 * len(surfaces) + 1.0, 4.2), layout="constrained")
    axes = fig.subplots(1, len(surfaces), squeeze=False, sharey=True)[0]
    image = None
    for ax, (label, (alphas, betas, _)) in zip(axes, surfaces.items(), strict=True):
        image = ax.contourf(alphas, betas, logs[label], levels=levels, cmap="viridis")
        ax.contour(alphas, betas, logs[label], levels=levels[::3], colors="k", linewidths=0.4)
        ax.plot(0, 0, marker="+", color="white", markersize=10)
        ax.set_title(label)
        ax.set_xlabel("direction 1")
        ax.set_aspect("equal")
    axes[0].set_ylabel("direction 2")
    fig.colorbar(image, ax=list(axes), label="log10 training loss")
    fig.suptitle(title)
    fig.savefig(path, dpi=120)
    return path
