"""What happens around the loop: checkpoints, stop signals, console, TensorBoard, results."""

from sam_train.callbacks.base import Callback
from sam_train.callbacks.checkpointing import Checkpointing
from sam_train.callbacks.ema import ModelEMA
from sam_train.callbacks.preemption import EXIT_INTERRUPTED, EXIT_PREEMPTED, Preemption
from sam_train.callbacks.progress import ConsoleProgress
from sam_train.callbacks.results import Results
from sam_train.callbacks.tensorboard import TensorBoard

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_PREEMPTED",
    "Callback",
    "Checkpointing",
    "ConsoleProgress",
    "ModelEMA",
    "Preemption",
    "Results",
    "TensorBoard",
]
