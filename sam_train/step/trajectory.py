"""The trajectory loss of SAF and MESA (Du et al., NeurIPS 2022): the criterion plus a KL term
towards reference outputs (MESA: an EMA model's), softened by a temperature, as the official
code writes it::

    KL(softmax(reference / T) || softmax(logits / T)).sum(-1).mean() * T^2 * weight

The reference comes from ``source.reference`` (None: the criterion alone), set for the whole
batch before the pass; the pass's outputs go to ``source.record`` (SAF keeps them for later
epochs). Accumulation micro-batches are refused by the config.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn
from torch.nn import functional as F


class ReferenceSource(Protocol):
    reference: torch.Tensor | None
    trajectory_weight: float
    temperature: float

    def record(self, logits: torch.Tensor) -> None:
        """Keep the pass's outputs (SAF's store; MESA keeps none)."""


class TrajectoryLoss(nn.Module):
    """``criterion(logits, targets)`` + the weighted, tempered KL towards the reference."""

    def __init__(self, criterion: nn.Module, source: ReferenceSource) -> None:
        super().__init__()
        self.criterion = criterion
        self.source = source

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.criterion(logits, targets)
        self.source.record(logits)
        reference = self.source.reference
        if reference is None:
            return loss
        t = self.source.temperature
        kl = F.kl_div(
            F.log_softmax(logits.float() / t, dim=-1),
            F.softmax(reference / t, dim=-1),
            reduction="none",
        )
        return loss + self.source.trajectory_weight * kl.sum(-1).mean() * t * t
