"""One optimizer step (SAM's two passes, accumulation, m-chunks) and its precision policy."""

from sam_train.step.evaluate import evaluate
from sam_train.step.nonfinite import MaskedUpdate, NonFiniteGuard
from sam_train.step.precision import Precision
from sam_train.step.sam_step import SAMStep, StepOutput

__all__ = ["MaskedUpdate", "NonFiniteGuard", "Precision", "SAMStep", "StepOutput", "evaluate"]
