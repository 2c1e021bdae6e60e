"""Symmetric label noise, the SAM paper's noisy-label setting (Table 4)."""

from __future__ import annotations

import numpy as np


def apply_label_noise(
    targets: list[int] | np.ndarray, num_classes: int, fraction: float, seed: int
) -> np.ndarray:
    """Replace round(fraction * n) labels, chosen at random, by uniformly random classes.

    The new class is drawn from all classes, so about 1/num_classes of the chosen labels keep
    their value (the usual "symmetric" noise). Same seed, same noisy labels.
    """
    labels = np.asarray(targets, dtype=np.int64).copy()
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(len(labels))[: round(fraction * len(labels))]
    labels[chosen] = rng.integers(0, num_classes, size=len(chosen))
    return labels
