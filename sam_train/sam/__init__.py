"""SAM optimizers (one class per variant on a shared base) and the helpers the step needs."""

from sam_train.sam.aesam import AESAM
from sam_train.sam.bsam import BayesianSAM
from sam_train.sam.esam import ESAM
from sam_train.sam.fsam import FriendlySAM
from sam_train.sam.gsam import GSAM
from sam_train.sam.interval import IntervalSAM
from sam_train.sam.ksam import KSAM
from sam_train.sam.looksam import LookSAM
from sam_train.sam.mesa import MESA
from sam_train.sam.msam import MomentumSAM
from sam_train.sam.rst import RandomizedSAM
from sam_train.sam.running_stats import RunningStatsGuard
from sam_train.sam.saf import SAF
from sam_train.sam.sam import SAM
from sam_train.sam.wsam import WeightedSAM

#: ``sam.name`` in the config -> the optimizer class.
VARIANTS: dict[str, type[SAM]] = {
    "sam": SAM,
    "gsam": GSAM,
    "looksam": LookSAM,
    "interval": IntervalSAM,
    "fsam": FriendlySAM,
    "msam": MomentumSAM,
    "rst": RandomizedSAM,
    "aesam": AESAM,
    "wsam": WeightedSAM,
    "esam": ESAM,
    "ksam": KSAM,
    "mesa": MESA,
    "saf": SAF,
    "bsam": BayesianSAM,
}
# The config declares the same names, torch-free, for its validator (config.schema
# SAM_VARIANTS, plus "none", which has no class): tests/test_imports.py checks they agree.

__all__ = [
    "AESAM",
    "ESAM",
    "GSAM",
    "KSAM",
    "MESA",
    "SAF",
    "SAM",
    "VARIANTS",
    "BayesianSAM",
    "FriendlySAM",
    "IntervalSAM",
    "LookSAM",
    "MomentumSAM",
    "RandomizedSAM",
    "RunningStatsGuard",
    "WeightedSAM",
]
