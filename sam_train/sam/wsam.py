"""Weighted SAM (Yue et al., KDD 2023, "Sharpness-Aware Minimization Revisited: Weighted
Sharpness as a Regularization Term"), in the form pytorch_optimizer 4.1's ``WSAM`` implements.

WSAM minimises L(w) + gamma / (1 - gamma) * (max_eps L(w + eps) - L(w)): the sharpness is a
regulariser with its own weight alpha = gamma / (1 - gamma) instead of SAM's implicit 1.
With g the gradient at w and g_s the gradient at w + eps (SAM's perturbation):

* ``decouple=True`` (the paper's and pytorch_optimizer's default): the base optimizer applies g,
  and the sharpness gradient is applied afterwards on its own, like decoupled weight decay,
  w <- w - lr * alpha * (g_s - g);
* ``decouple=False``: the base optimizer applies g + alpha * (g_s - g).

gamma = 0.5 (alpha = 1) without decoupling is SAM. Where this differs from pytorch_optimizer:
it clips g_s before mixing (its ``max_norm``); here ``trainer.clip_grad_norm`` clips what the
base optimizer applies (g, decoupled), and the decoupled sharpness step is not clipped. The
decoupled step runs as a post-step hook of the base optimizer, so a skipped (non-finite) step
skips it too. Cost: SAM's two passes, plus one gradient-sized buffer (g, then g_s - g).
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam._options import within
from sam_train.sam.sam import SAM


class WeightedSAM(SAM):
    """SAM whose sharpness term has weight gamma / (1 - gamma), optionally decoupled.

    Args:
        gamma: in [0, 1); the sharpness weight is gamma / (1 - gamma).
        decouple: apply the sharpness gradient after the base step (True), or mix it into
            the gradient the base optimizer applies (False).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    combines_gradients = True

    def __init__(
        self, *args: Any, gamma: float = 0.9, decouple: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        within("WeightedSAM", "[0, 1)", gamma=gamma)
        self.gamma = float(gamma)
        self.alpha = gamma / (1.0 - gamma)
        self.decouple = bool(decouple)
        self._sharpness_pending = False
        if self.decouple:
            self.base_optimizer.register_step_post_hook(lambda *_: self._sharpness_step())

    def _combine_gradients(self, perturbed: bool) -> None:
        if not perturbed:
            return
        params = self._step_params
        g = [self._first_grad[p] for p in params]
        g_s = [p.grad for p in params]
        torch._foreach_sub_(g_s, g)  # g_s - g, the sharpness gradient
        if not self.decouple:
            torch._foreach_mul_(g_s, self.alpha)
            torch._foreach_add_(g_s, g)
            return
        sharpness = [self._first_grad[p] for p in params]  # reuse g's buffers for g_s - g
        for p, s in zip(params, sharpness, strict=True):
            grad = p.grad.clone()
            p.grad.copy_(s)  # the base optimizer applies g
            s.copy_(grad)
        self._sharpness_pending = True

    @torch.no_grad()
    def _sharpness_step(self) -> None:
        """After the base step: w <- w - lr * alpha * (g_s - g), per group's learning rate."""
        if not self._sharpness_pending:
            return
        self._sharpness_pending = False
        for group in self.param_groups:
            params = [p for p in group["params"] if p in self._first_grad and p.grad is not None]
            if params:
                sharpness = [self._first_grad[p] for p in params]
                torch._foreach_add_(params, sharpness, alpha=-group["lr"] * self.alpha)
