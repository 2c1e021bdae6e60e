"""LookSAM (Liu et al., CVPR 2022, "Towards Efficient and Scalable Sharpness-Aware
Minimization", Algorithm 1).

Every k-th step is a SAM step, which also stores the part of the SAM gradient g_s orthogonal to
the plain gradient g:

    g_v = g_s - (<g_s, g> / ||g||^2) g

The k - 1 steps in between take ONE forward-backward pass (``first_step`` returns False: no
perturbation, no second pass) and apply g + alpha * (||g|| / ||g_v||) * g_v, reusing the stored
direction with the current gradient's scale. Norms and inner products are over all parameters
(the paper treats the weights as one vector; the layer-wise Look-LayerSAM is not included).

Defaults: k = 5, alpha = 0.7 (the paper's ViT settings). Extra cost per step: on average 1/k
forward-backward passes over the base optimizer's one (SAM: 1); memory: two gradient-sized
buffers (g during a SAM step, g_v across steps, saved in ``state_dict()["sam"]``).
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam.interval import IntervalSAM
from sam_train.sam.sam import (
    _NORM_EPS,
    global_dot,
    global_norm,
    non_negative,
)


class LookSAM(IntervalSAM):
    """SAM every ``k`` steps; in between, the stored orthogonal direction is added to g.

    Args:
        k: a SAM step every k steps (k = 1 is SAM).
        alpha: weight of the reused direction, >= 0.
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    combines_gradients = True

    def __init__(self, *args: Any, k: int = 5, alpha: float = 0.7, **kwargs: Any) -> None:
        super().__init__(*args, k=k, **kwargs)
        non_negative("LookSAM", alpha=alpha)
        self.alpha = float(alpha)
        self._g_v: dict[torch.Tensor, torch.Tensor] = {}

    def will_perturb(self) -> bool:
        # A SAM step on the schedule, and whenever there is no stored direction yet.
        return super().will_perturb() or not self._g_v

    def _combine_gradients(self, perturbed: bool) -> None:
        params = self._step_params
        if perturbed:
            g = [self._first_grad[p] for p in params]
            g_s = [p.grad for p in params]
            c = global_dot(g_s, g) / (global_dot(g, g) + _NORM_EPS)
            self._keep(self._g_v, params, g_s)
            # g_v = g_s - c g; g (the kept first gradient) is scaled in place: a tensor alpha
            # would be read back to the host, and g is not needed after this step
            torch._foreach_mul_(g, c)
            torch._foreach_sub_([self._g_v[p] for p in params], g)
            return
        params = [p for p in params if p in self._g_v]
        grads = [p.grad for p in params]
        g_v = [self._g_v[p] for p in params]
        scale = self.alpha * global_norm(grads) / (global_norm(g_v) + _NORM_EPS)
        torch._foreach_add_(grads, torch._foreach_mul(g_v, scale))

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "g_v": self._buffers_to_state(self._g_v)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._g_v = self._buffers_from_state(state.get("g_v", {}))
