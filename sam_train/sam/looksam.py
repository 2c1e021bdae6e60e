"""LookSAM (Liu et al., CVPR 2022, "Towards Efficient and Scalable Sharpness-Aware
Minimization", Algorithm 1).

Every k-th step is a SAM step, which also stores the part of the SAM gradient g_s orthogonal to
the plain gradient g:

    g_v = g_s - (<g_s, g> / ||g||^2) g

The k - 1 steps in between take ONE forward-backward pass (``first_step`` returns False: no
perturbation, no second pass) and apply g + alpha * (||g|| / ||g_v||) * g_v, reusing the stored
direction with the current gradient's scale (the layer-wise Look-LayerSAM is not included).

Projection and rescaling are per parameter tensor by default, as the public implementations do
them (pytorch_optimizer 4.1, rollovd/LookSAM; no official code was found): each tensor's
added term is then alpha times that tensor's own gradient norm. ``per_tensor=False`` takes the
paper's vectors literally, over all weights as one: the added term is alpha * ||g|| in all and
can land on tensors whose own gradient is small. On ``paper/noisy_digits`` at 60% label noise
that form collapsed 4 of 8 runs (rho 0.2) to chance: g_v keeps pushing the last block's
BatchNorm shift down, ||g_v|| / ||g|| falls from 0.44 to about 0.025, so the reused term is
amplified alpha ||g|| / ||g_v|| from 1.9x to a median of 28x of the g_v measured, until the
network predicts the uniform distribution (loss ln 10, README "LookSAM at 60% noise").

Defaults: k = 5, alpha = 0.7 (the paper's ViT settings). Extra cost per step: on average 1/k
forward-backward passes over the base optimizer's one (SAM: 1); memory: two gradient-sized
buffers (g during a SAM step and the scaled g_v between them, g_v across steps, saved in
``state_dict()["sam"]``).
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
from sam_train.sam.sharded import copy_all, is_sharded, local, replicated_value

#: What the reused direction's scale and the projection's coefficient are: one 0-d tensor
#: (over all weights) or one per parameter tensor.
Scale = torch.Tensor | list[torch.Tensor]


def tensor_dots(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """<a_i, b_i> for each pair of tensors, one vector on the device (each over every shard,
    one all-reduce for all of them): the per-tensor counterpart of ``global_dot``."""
    pairs = zip(a, b, strict=True)
    if a and is_sharded(a[0]):
        return replicated_value(torch.stack([(x * y).sum() for x, y in pairs]))
    return torch.stack([torch.vdot(x.flatten(), y.flatten()) for x, y in pairs])


def tensor_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Each tensor's 2-norm (over every shard), one vector on the device."""
    if tensors and is_sharded(tensors[0]):
        return tensor_dots(tensors, tensors).sqrt()
    return torch.stack(torch._foreach_norm(tensors))


def _zero_if_nonfinite(g_v: list[torch.Tensor]) -> None:
    """A SAM step whose gradients overflowed (fp16) is skipped, and a g_v computed from them
    would make the next k - 1 steps non-finite too (each halving GradScaler's scale): zero it
    on the device instead (no host read), so those steps apply the plain gradient."""
    finite = torch.isfinite(global_norm(g_v))
    for tensor in g_v:
        local(tensor).masked_fill_(~finite, 0.0)


class LookSAM(IntervalSAM):
    """SAM every ``k`` steps; in between, the stored orthogonal direction is added to g.

    Args:
        k: a SAM step every k steps (k = 1 is SAM).
        alpha: weight of the reused direction, >= 0.
        per_tensor: project and rescale each parameter tensor on its own (the public
            implementations); False: all weights as one vector (the paper's equations).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    combines_gradients = True

    def __init__(
        self, *args: Any, k: int = 5, alpha: float = 0.7, per_tensor: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, k=k, **kwargs)
        non_negative("LookSAM", alpha=alpha)
        self.alpha = float(alpha)
        self.per_tensor = bool(per_tensor)
        self._g_v: dict[torch.Tensor, torch.Tensor] = {}

    def will_perturb(self) -> bool:
        # A SAM step on the schedule, and whenever there is no stored direction yet.
        return super().will_perturb() or not self._g_v

    def _projection(self, g_s: list[torch.Tensor], g: list[torch.Tensor]) -> Scale:
        """c in g_v = g_s - c g: <g_s, g> / ||g||^2."""
        if self.per_tensor:  # one vector, then views of it: no kernel per tensor
            return list((tensor_dots(g_s, g) / (tensor_dots(g, g) + _NORM_EPS)).unbind())
        return global_dot(g_s, g) / (global_dot(g, g) + _NORM_EPS)

    def _reuse_scale(self, grads: list[torch.Tensor], g_v: list[torch.Tensor]) -> Scale:
        """alpha * ||g|| / ||g_v||: the stored direction at the current gradient's scale."""
        if self.per_tensor:
            scale = self.alpha * tensor_norms(grads) / (tensor_norms(g_v) + _NORM_EPS)
            return list(scale.unbind())
        return self.alpha * global_norm(grads) / (global_norm(g_v) + _NORM_EPS)

    def _combine_gradients(self, perturbed: bool) -> None:
        params = self._step_params
        if perturbed:
            g = [self._first_grad[p] for p in params]
            g_s = [p.grad for p in params]
            c = self._projection(g_s, g)
            self._keep(self._g_v, params, g_s)
            # g_v = g_s - c g; g (the kept first gradient) is scaled in place: a tensor alpha
            # would be read back to the host, and g is not needed after this step
            torch._foreach_mul_(g, c)
            g_v = [self._g_v[p] for p in params]
            torch._foreach_sub_(g_v, g)
            _zero_if_nonfinite(g_v)
            return
        params = [p for p in params if p in self._g_v]
        if not params:
            return
        grads = [p.grad for p in params]
        g_v = [self._g_v[p] for p in params]
        # the scaled g_v in the first-gradient buffers, idle between SAM steps: no temporary
        # of the weights' size (a tensor scale cannot be _foreach_add_'s alpha without a read)
        scaled = self._kept(self._first_grad, params, g_v)
        copy_all(scaled, g_v)
        torch._foreach_mul_(scaled, self._reuse_scale(grads, g_v))
        torch._foreach_add_(grads, scaled)

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "g_v": self._buffers_to_state(self._g_v)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._g_v = self._buffers_from_state(state.get("g_v", {}))
