"""Shake-Shake (Gastaldi, 2017) and ShakeDrop (Yamada et al., 2018) as autograd functions.

Both scale a residual branch by one random coefficient in the forward pass and by another in
the backward pass, per sample. The coefficients come from ``torch.rand`` on the tensor's device,
that is from torch's default CPU or CUDA generator: the engine snapshots that generator's state
before SAM's first pass and restores it before the second, so both passes see the same network
(the paper's JAX code shares one PRNG key between the passes for the same reason).
"""

from __future__ import annotations

import torch
from torch import nn


def _per_sample(x: torch.Tensor) -> tuple[int, ...]:
    return (x.shape[0],) + (1,) * (x.dim() - 1)


class _ShakeShake(torch.autograd.Function):
    """``alpha * a + (1 - alpha) * b`` forward; gradients scaled by ``beta`` and ``1 - beta``."""

    @staticmethod
    def forward(ctx, a, b, alpha, beta):  # type: ignore[override]
        ctx.save_for_backward(beta)
        return a * alpha + b * (1 - alpha)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (beta,) = ctx.saved_tensors
        return grad * beta, grad * (1 - beta), None, None


class _ShakeDrop(torch.autograd.Function):
    """``forward_gate * x`` forward; the gradient scaled by ``backward_gate``."""

    @staticmethod
    def forward(ctx, x, forward_gate, backward_gate):  # type: ignore[override]
        ctx.save_for_backward(backward_gate)
        return x * forward_gate

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (backward_gate,) = ctx.saved_tensors
        return grad * backward_gate, None, None


def shake_shake(a: torch.Tensor, b: torch.Tensor, training: bool) -> torch.Tensor:
    """Blend two branches with per-sample U(0, 1) weights (forward and backward drawn apart).

    In evaluation both branches count half, the expectation of the training blend.
    """
    if not training:
        return 0.5 * (a + b)
    alpha = torch.rand(_per_sample(a), device=a.device, dtype=a.dtype)
    beta = torch.rand(_per_sample(a), device=a.device, dtype=a.dtype)
    return _ShakeShake.apply(a, b, alpha, beta)


def shake_drop(
    x: torch.Tensor,
    keep_prob: float,
    training: bool,
    alpha_range: tuple[float, float] = (-1.0, 1.0),
    beta_range: tuple[float, float] = (0.0, 1.0),
) -> torch.Tensor:
    """ShakeDrop's branch scaling ``b + alpha - b * alpha`` with ``b ~ Bernoulli(keep_prob)``.

    A kept sample (b = 1) passes unchanged; a dropped one is scaled by alpha forward and beta
    backward. Evaluation multiplies by the expectation, ``keep_prob + E[alpha] (1 - keep_prob)``.
    """
    lo, hi = alpha_range
    if not training:
        mean_alpha = 0.5 * (lo + hi)
        return x * (keep_prob + mean_alpha * (1.0 - keep_prob))
    shape = _per_sample(x)
    keep = torch.rand(shape, device=x.device) < keep_prob
    alpha = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(lo, hi)
    beta = torch.empty(shape, device=x.device, dtype=x.dtype).uniform_(*beta_range)
    one = torch.ones((), device=x.device, dtype=x.dtype)
    # b + alpha - b * alpha for b in {0, 1}, exactly 1 for a kept sample.
    return _ShakeDrop.apply(x, torch.where(keep, one, alpha), torch.where(keep, one, beta))


class ShakeDrop(nn.Module):
    """ShakeDrop as a layer, with the block's keep probability fixed at construction."""

    def __init__(self, keep_prob: float) -> None:
        super().__init__()
        if not 0.0 <= keep_prob <= 1.0:
            raise ValueError(f"keep_prob must be in [0, 1], got {keep_prob}")
        self.keep_prob = keep_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return shake_drop(x, self.keep_prob, self.training)

    def extra_repr(self) -> str:
        return f"keep_prob={self.keep_prob:.3f}"
