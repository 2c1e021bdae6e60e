"""GSAM: surrogate-gap guided SAM (Zhuang et al., ICLR 2022, "Surrogate Gap Minimization
Improves Sharpness-Aware Training"; reference code github.com/juntang-zhuang/GSAM).

With g the gradient at w and g_p the gradient at w + eps, g is split into its part along g_p and
the orthogonal rest g_perp = g - (<g, g_p> / ||g_p||^2) g_p. The base optimizer applies

    g_p - alpha * g_perp

which descends the perturbed loss (along g_p) and ascends the surrogate gap, h_p - h, along the
direction that leaves the perturbed loss unchanged to first order. The radius follows the
learning rate (the paper's Eq. 9):

    rho_t = rho_min + (rho - rho_min) * (lr_t - lr_min) / (lr_max - lr_min)

per parameter group, with lr_max the group's ``initial_lr`` (the learning rate when GSAM was
built; PyTorch's and timm's LR schedulers record it under the same key) and lr_min the
schedule's floor.

Defaults: alpha = 0.2 (the reference code's CIFAR example), rho_min = 0 (rho proportional to
the learning rate when lr_min = 0). Extra cost per step over SAM: one copy of the gradient
(memory) and two global reductions; still two forward-backward passes.
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam.sam import _NORM_EPS, SAM, global_dot, non_negative


class GSAM(SAM):
    """SAM whose update also decreases the surrogate gap; ``rho`` is rho_max of the schedule.

    Args:
        alpha: weight of the orthogonal (gap-reducing) component, >= 0; 0 is SAM with a
            scheduled radius.
        rho_min: the radius at ``lr_min``; 0 <= rho_min <= rho.
        lr_min: the learning-rate schedule's floor (``scheduler.min_lr``).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    combines_gradients = True

    def __init__(
        self,
        *args: Any,
        alpha: float = 0.2,
        rho_min: float = 0.0,
        lr_min: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        non_negative("GSAM", alpha=alpha, lr_min=lr_min)
        for group in self.param_groups:
            if not 0.0 <= rho_min <= group["rho"]:
                raise ValueError(
                    f"GSAM needs 0 <= rho_min <= rho, got rho_min={rho_min}, rho={group['rho']}"
                )
        self.alpha = float(alpha)
        self.rho_min = float(rho_min)
        self.lr_min = float(lr_min)
        for group in self.param_groups:  # lr_max; LR schedulers set (and keep) the same key
            group.setdefault("initial_lr", group["lr"])

    def _group_rho(self, group: dict[str, Any]) -> float:
        lr_max = group.setdefault("initial_lr", group["lr"])
        if lr_max <= self.lr_min:
            return group["rho"]
        fraction = (group["lr"] - self.lr_min) / (lr_max - self.lr_min)
        fraction = min(max(fraction, 0.0), 1.0)
        return self.rho_min + (group["rho"] - self.rho_min) * fraction

    def current_rho(self) -> list[float]:
        """The radius each group would use now (for logging)."""
        return [self._group_rho(group) for group in self.param_groups]

    def _combine_gradients(self, perturbed: bool) -> None:
        if not perturbed or self.alpha == 0:
            return
        params = self._step_params
        g = [self._first_grad[p] for p in params]
        g_p = [p.grad for p in params]
        # g_p - alpha * (g - c * g_p) = (1 + alpha * c) * g_p - alpha * g
        c = global_dot(g, g_p) / (global_dot(g_p, g_p) + _NORM_EPS)
        torch._foreach_mul_(g_p, 1.0 + self.alpha * c)
        torch._foreach_add_(g_p, g, alpha=-self.alpha)
