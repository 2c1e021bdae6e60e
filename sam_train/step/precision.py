"""Mixed precision: one object, built once (``build.build_precision``) and handed to the
step, the strategy (FSDP's compute dtype), the evaluator and the EMA.

bf16 needs autocast only. fp16 training needs a ``torch.amp.GradScaler`` too: eps = rho g /
||g|| does not depend on the loss scale, so the first SAM pass is never unscaled; the second
pass's gradients are unscaled once, before clipping. Evaluation needs no scaler.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast for ``device`` in ``name`` ("none", "bf16" or "fp16"), and fp16's scaler
    (training only: :class:`SAMStep` refuses fp16 without one)."""

    def __init__(
        self,
        name: str = "none",
        device: torch.device | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
        self.name = name
        self.device = device or torch.device("cpu")
        self.scaler = scaler

    @property
    def dtype(self) -> torch.dtype | None:
        """The compute dtype of autocast (and of FSDP's mixed precision); None: float32."""
        return PRECISIONS[self.name]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss if self.scaler is None else self.scaler.scale(loss)

    def unscaled_norm(self, norm: torch.Tensor | None) -> torch.Tensor | None:
        """A norm of scaled gradients, without the loss scale (for logging)."""
        if norm is None or self.scaler is None:
            return norm
        return norm / self.scaler._get_scale_async()

    def overflow_factor(self, first_grad_norm: torch.Tensor | None) -> torch.Tensor | None:
        """fp16: 1, or NaN when the first gradient's norm overflowed, for the second loss.

        The scaler inspects only the gradients it unscales (the second pass's). A NaN factor
        on the second loss makes them NaN before DDP all-reduces them, so every rank sees the
        overflow of any one and skips the step, without a host sync or an extra collective.
        """
        if self.scaler is None or first_grad_norm is None:
            return None
        finite = torch.isfinite(first_grad_norm)
        return torch.where(finite, 1.0, float("nan")).to(self.device)
