"""SAM optimizers (one class per variant on a shared base) and the helpers the step needs."""

from sam_train.sam.fsam import FriendlySAM
from sam_train.sam.gsam import GSAM
from sam_train.sam.interval import IntervalSAM
from sam_train.sam.looksam import LookSAM
from sam_train.sam.running_stats import RunningStatsGuard
from sam_train.sam.sam import SAM

#: ``sam.name`` in the config -> the optimizer class.
VARIANTS: dict[str, type[SAM]] = {
    "sam": SAM,
    "gsam": GSAM,
    "looksam": LookSAM,
    "interval": IntervalSAM,
    "fsam": FriendlySAM,
}
# The config declares the same names, torch-free, for its validator (config.schema
# SAM_VARIANTS, plus "none", which has no class): tests/test_imports.py checks they agree.

__all__ = [
    "GSAM",
    "SAM",
    "VARIANTS",
    "FriendlySAM",
    "IntervalSAM",
    "LookSAM",
    "RunningStatsGuard",
]
