"""The hyper-parameters a table of runs shows (TensorBoard's HParams tab, W&B, MLflow): the
keys the command line overrode, in its order, then a fixed core set. The whole flattened
config (about 60 keys, ``augment.*`` first alphabetically) made the runs of a SAM-vs-SGD
sweep look identical in TensorBoard, which ticks only the first few columns."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sam_train.resume import FREE_KEYS

CORE_HPARAMS = (
    "sam.name",
    "sam.rho",
    "optimizer.name",
    "optimizer.lr",
    "optimizer.weight_decay",
    "model.name",
    "dataset.name",
    "scheduler.name",
    "trainer.epochs",
    "trainer.batch_size",
    "seed",
)
# With resume.FREE_KEYS: keys that do not shape the run.
NOT_HPARAMS = ("hydra", "logger", "hparams_search")


def _describes_run(key: str) -> bool:
    prefixes = (*FREE_KEYS, *NOT_HPARAMS)
    return not any(key == p.rstrip(".") or key.startswith(p.rstrip(".") + ".") for p in prefixes)


def curated_hparams(flat: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``{key: value}``: each overridden key that shapes the run, with its resolved value (a
    group choice as its ``.name``: ``sam=none`` is ``sam.name``; ``experiment=quickstart`` as
    written), then :data:`CORE_HPARAMS`."""
    chosen: dict[str, Any] = {}
    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if not sep or not _describes_run(key):
            continue
        if key not in flat and f"{key}.name" in flat:
            key = f"{key}.name"
        chosen[key] = flat.get(key, value)
    for key in CORE_HPARAMS:
        if key in flat:
            chosen.setdefault(key, flat[key])
    return chosen
