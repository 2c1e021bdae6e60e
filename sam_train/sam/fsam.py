"""Friendly SAM (Li et al., CVPR 2024, "Friendly Sharpness-Aware Minimization"; reference code
github.com/nblt/F-SAM).

SAM's ascent gradient is the full-data gradient plus the batch-specific noise; the paper finds
the full-gradient component harms generalisation and removes it, estimated by an exponential
moving average m of past batch gradients:

    d_t = g_t - sigma * m_{t-1},    m_t = lambda * m_{t-1} + (1 - lambda) * g_t,
    eps = rho * d_t / ||d_t||

with m_0 = g_0 on the first step (whose ascent is then plain SAM's), as the reference code does.

Defaults: sigma = 1, lambda = 0.9 (the reference optimizer's defaults; the paper uses 0.95 on
CIFAR-100). Extra cost per step: none in passes (two, like SAM); memory: one gradient-sized
buffer, saved in ``state_dict()["sam"]``. One ascent step only (``inner_steps=1``).
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam._options import one_ascent_step, within
from sam_train.sam.sam import SAM, non_negative


class FriendlySAM(SAM):
    """SAM whose ascent follows the batch gradient minus an EMA of past gradients.

    Args:
        sigma: how much of the EMA to remove, >= 0 (0 is SAM).
        ema_decay: lambda in [0, 1), the EMA's decay.
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    def __init__(
        self, *args: Any, sigma: float = 1.0, ema_decay: float = 0.9, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        non_negative("Friendly SAM", sigma=sigma)
        within("Friendly SAM", "[0, 1)", ema_decay=ema_decay)
        one_ascent_step("Friendly SAM", self.inner_steps)
        self.sigma = float(sigma)
        self.ema_decay = float(ema_decay)
        self._ema: dict[torch.Tensor, torch.Tensor] = {}

    def _ascent_gradients(
        self, group: dict[str, Any], params: list[torch.Tensor], inner_step: int
    ) -> list[torch.Tensor]:
        grads = list(super()._ascent_gradients(group, params, inner_step))
        seen = [i for i, p in enumerate(params) if p in self._ema]
        for p, g in zip(params, grads, strict=True):
            if p not in self._ema:
                self._ema[p] = g.clone()  # m_0 = g_0: the first ascent is SAM's
        if not seen:
            return grads
        seen_grads = [grads[i] for i in seen]
        ema = [self._ema[params[i]] for i in seen]
        directions = torch._foreach_add(seen_grads, ema, alpha=-self.sigma)  # uses m_{t-1}
        torch._foreach_lerp_(ema, seen_grads, 1.0 - self.ema_decay)  # then m_t
        for i, direction in zip(seen, directions, strict=True):
            grads[i] = direction
        return grads

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "ema": self._buffers_to_state(self._ema)}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._ema = self._buffers_from_state(state.get("ema", {}))
