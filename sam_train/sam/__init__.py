"""SAM optimizers and the helpers the two-pass step needs."""

from sam_train.sam.running_stats import RunningStatsGuard
from sam_train.sam.sam import SAM

__all__ = ["SAM", "RunningStatsGuard"]
