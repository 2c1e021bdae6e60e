"""What happens around the loop: checkpoints, stop signals, console, metrics.csv, the loggers
(TensorBoard, CSV, W&B, MLflow), results."""

from sam_train.callbacks.checkpointing import Checkpointing
from sam_train.callbacks.csv_logger import CSVLogger
from sam_train.callbacks.ema import ModelEMA
from sam_train.callbacks.loggers import MetricLogger
from sam_train.callbacks.metrics_csv import MetricsCSV
from sam_train.callbacks.mlflow_logger import MLflowLogger
from sam_train.callbacks.preemption import Preemption
from sam_train.callbacks.progress import ConsoleProgress
from sam_train.callbacks.results import Results
from sam_train.callbacks.tensorboard import TensorBoard
from sam_train.callbacks.wandb_logger import WandbLogger
from sam_train.trainer import Callback

__all__ = [
    "CSVLogger",
    "Callback",
    "Checkpointing",
    "ConsoleProgress",
    "MLflowLogger",
    "MetricLogger",
    "MetricsCSV",
    "ModelEMA",
    "Preemption",
    "Results",
    "TensorBoard",
    "WandbLogger",
]
