"""``RunState``: where a run is, in the few numbers a checkpoint must carry to continue it.

A run's position is its global step: the epoch and the batches to skip follow from it, so a
run resumed from any checkpoint (epoch end or mid-epoch) continues exactly. Totals such as
training time and images seen add up over every session of the run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _no_best() -> dict[str, Any]:
    return {"acc1": None, "acc5": None, "loss": None, "epoch": -1}


@dataclass
class RunState:
    global_step: int = 0
    best: dict[str, Any] = field(default_factory=_no_best)  # test metrics at the best epoch
    skipped_steps: int = 0  # steps whose gradient was not finite
    train_metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    test_metrics: dict[str, float] = field(default_factory=dict)  # the last evaluation's
    images_seen: int = 0  # summed over processes and sessions
    train_seconds: float = 0.0  # summed over sessions
    complete: bool = False  # every configured epoch trained and evaluated

    def epoch(self, steps_per_epoch: int) -> int:
        """Completed epochs."""
        return self.global_step // steps_per_epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)
