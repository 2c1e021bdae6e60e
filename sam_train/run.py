"""``Run``: every object a training run needs, built and placed by :mod:`sam_train.build`.

A module of its own so that the trainer, the callbacks and the checkpoint format can name it
without importing the factory (and the config) that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from sam_train.data.datasets import DatasetPair
from sam_train.data.loaders import Loaders
from sam_train.step import SAMStep
from sam_train.step.precision import Precision
from sam_train.strategy import Strategy


@dataclass
class Run:
    """Every object a training run needs, built and placed; no config inside."""

    model: nn.Module  # the plain module: state dicts, EMA, evaluation
    train_model: nn.Module  # what the step runs: compiled and/or wrapped by the strategy
    optimizer: Optimizer  # a SAM variant over the base optimizer, or the base optimizer
    scheduler: Any  # timm scheduler, stepped per update
    step: SAMStep
    strategy: Strategy
    data: DatasetPair
    loaders: Loaders
    device: torch.device
    epochs: int
    steps_per_epoch: int
    per_device_batch: int

    @property
    def precision(self) -> Precision:
        return self.step.precision

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.step.scaler
