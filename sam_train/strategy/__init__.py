"""How the processes of a run share work: wrapping, gradient and buffer averaging, reductions.

The SAM step, the evaluation loop and the callbacks ask the strategy, never the model: a
single process runs :class:`SingleProcess` (every collective is a no-op), torchrun runs
:class:`DDPStrategy` or :class:`FSDPStrategy` (``trainer.strategy``). ``build.build_strategy``
picks one from the environment.
"""

from sam_train.strategy.base import SingleProcess, Strategy
from sam_train.strategy.ddp import DDPStrategy
from sam_train.strategy.fsdp import FSDPStrategy
from sam_train.strategy.process_group import DistInfo

__all__ = ["DDPStrategy", "DistInfo", "FSDPStrategy", "SingleProcess", "Strategy"]
