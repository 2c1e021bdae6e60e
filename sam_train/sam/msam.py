"""Momentum-SAM (Becker, Altrock & Risse, 2024, "Momentum-SAM: Sharpness Aware Minimization
without Computational Overhead"; official code github.com/MarlonBecker/MSAM).

ONE forward-backward pass per step: before it, the weights move along the base optimizer's
normalised momentum buffer v instead of a fresh ascent gradient,

    w~ = w - rho * v / ||v||

(the sign of the official ``optimizer/msam.py``: torch's SGD steps along -v, so -v points where
the previous steps went, where the loss of the new batch tends to rise; the paper's eps =
-rho v/||v||). The gradient is taken at w~, the weights are copied back to w, and the base
optimizer steps with that gradient. The buffer is SGD's ``momentum_buffer`` (v = mu v + g) and
the Adam family's ``exp_avg`` (the first moment; official ``optimizer/adamW_msam.py``).

Step 1 (no momentum yet: torch creates the buffer at the first base step) is a plain
base-optimizer step; the official code starts from a zero buffer, whose perturbation is zero,
so the two agree. Where the official code and this one differ: it keeps the weights at w~
between steps (and moves them back for evaluation), which is the same trajectory; it adds
weight decay at w~, here decay is the base optimizer's at w (the convention of every variant
here). The single pass updates norm-layer running statistics at w~, as the official code does.

Cost: one forward-backward per step (SGD's), one copy of the weights, two fused reductions.
Under DDP the one gradient is all-reduced and every replica holds the same momentum, so the
replicas perturb and step alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sam_train.sam.sam import _NORM_EPS, SAM, global_norm

#: The base optimizers' momentum buffers, in the order they are looked up.
MOMENTUM_KEYS = ("momentum_buffer", "exp_avg")


def has_momentum(group: dict[str, Any]) -> bool:
    """Does a base optimizer's param group keep a momentum (SGD momentum or Adam's beta1)?"""
    if "betas" in group:
        return group["betas"][0] > 0
    return group.get("momentum", 0) > 0


class MomentumSAM(SAM):
    """SAM along the momentum: one pass at w - rho v / ||v||, then the base step at w.

    Use it through :class:`~sam_train.step.SAMStep` (``perturb_before_pass``, one pass,
    ``restore``) or ``step(closure)``. ``first_step`` is not defined: there is no ascent from
    a gradient. Options of :class:`SAM` other than ``rho`` do not apply.
    """

    single_pass = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.defaults["adaptive"] or self.p != 2 or self.perturb_fraction < 1:
            raise ValueError("MomentumSAM takes rho only (not adaptive, p or perturb_fraction)")
        if self.inner_steps != 1 or self.include_weight_decay:
            raise ValueError("MomentumSAM has no ascent: no inner_steps or include_weight_decay")
        for group in self.param_groups:
            if not has_momentum(group):
                raise ValueError(
                    "MomentumSAM needs a base optimizer with momentum (SGD momentum > 0, or "
                    "Adam's beta1 > 0)"
                )

    def will_perturb(self) -> bool:
        return False

    def _momentum(self, p: torch.Tensor) -> torch.Tensor | None:
        state = self.state.get(p, {})
        for key in MOMENTUM_KEYS:
            if state.get(key) is not None:
                return state[key]
        return None

    @torch.no_grad()
    def perturb_before_pass(
        self, images: torch.Tensor | None = None, indices: torch.Tensor | None = None
    ) -> bool:
        """w -> w - rho * v / ||v|| over the parameters that have a momentum; False when none
        has one yet (step 1: the weights stay at w)."""
        pairs = [
            (group, p, v)
            for group in self.param_groups
            for p in group["params"]
            if (v := self._momentum(p)) is not None
        ]
        self._perturbed = []
        if not pairs:
            return False
        params = [p for _, p, _ in pairs]
        self._keep(self._backup, params, params)
        scale = 1.0 / (global_norm([v for _, _, v in pairs]) + _NORM_EPS)
        for group, p, v in pairs:
            p.sub_(v * (self._group_rho(group) * scale))
        self._perturbed = params
        return True

    def first_step(
        self, zero_grad: bool = False, ascent_closure: Callable[[], Any] | None = None
    ) -> bool:
        raise RuntimeError("MomentumSAM perturbs before the pass: call perturb_before_pass()")

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Perturb, ``closure`` (forward, backward) at w~, restore, base step."""
        if closure is None:
            raise RuntimeError("MomentumSAM.step needs a closure that computes loss and gradients")
        self.zero_grad(set_to_none=True)  # a gradient at w, if any, is not used
        self.perturb_before_pass()
        with torch.enable_grad():
            loss = closure()
        self.restore()
        self.base_optimizer.step()
        return loss
