"""What a resume may change: the checkpoint's config against the new one.

Keys that do not alter the trajectory (where files go, how often to log, evaluation batch,
loader workers) may change freely; ``trainer.epochs`` may grow (the schedule is rebuilt for
the new length); any other difference is refused with the list of keys, unless the user
passes ``resume_strict=false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Prefixes of keys whose change leaves the trajectory (weights, order of batches) alone.
FREE_KEYS = (
    "resume",
    "resume_strict",
    "run_name",
    "checkpoint.",
    "logger.",
    "dataset.root",
    "dataset.download",
    "dataset.verify",
    "trainer.log_every",
    "trainer.eval_batch_size",
    "trainer.num_workers",
    "trainer.cpu_threads",
    "trainer.device",
    "trainer.compile",
)
GROWABLE_KEY = "trainer.epochs"


@dataclass(frozen=True)
class ConfigChange:
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}."))
    return flat


def trajectory_changes(saved: dict[str, Any], new: dict[str, Any]) -> list[ConfigChange]:
    """Keys whose value differs between two resolved configs, except the free ones and a
    growing ``trainer.epochs``."""
    old_flat, new_flat = flatten(saved), flatten(new)
    changes = []
    for key in sorted(set(old_flat) | set(new_flat)):
        old, value = old_flat.get(key), new_flat.get(key)
        if old == value or key.startswith(FREE_KEYS):
            continue
        if key == GROWABLE_KEY and isinstance(old, int) and isinstance(value, int) and value > old:
            continue
        changes.append(ConfigChange(key, old, value))
    return changes


def epochs_grown(saved: dict[str, Any], new: dict[str, Any]) -> tuple[int, int] | None:
    """(old, new) when the new config trains longer than the checkpoint's."""
    old, value = flatten(saved).get(GROWABLE_KEY), flatten(new).get(GROWABLE_KEY)
    if isinstance(old, int) and isinstance(value, int) and value > old:
        return old, value
    return None


def describe(changes: list[ConfigChange], limit: int = 6) -> str:
    shown = "; ".join(str(change) for change in changes[:limit])
    return shown + (f"; and {len(changes) - limit} more" if len(changes) > limit else "")
