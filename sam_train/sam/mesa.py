"""MESA, the memory-efficient variant of Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan &
Zhou, NeurIPS 2022; official code AngusDujw/SAF, ``MESA_train.py``).

One forward-backward pass per step, with no perturbation: from ``start_step`` on, the loss
gains a trajectory term, the KL divergence between the outputs of an exponential moving average
of the weights (timm's ``ModelEmaV3``, decay ``ema_decay``, updated after each base step) and
the current outputs, both softened by a temperature T:

    loss = CE(f_w(x), y) + lambda * T^2 * KL(softmax(f_ema(x) / T) || softmax(f_w(x) / T))

(``sam_train.step.trajectory.TrajectoryLoss`` adds it; the EMA's outputs come from one extra
forward without gradients, in eval mode, as the official code runs ``model_ema.module``).

Defaults as the official MESA_train.py: lambda = 0.3 (``--reinforce``), T = 5, the term from
epoch 5 (``--kl_start_epoch``; the official code starts after it, ``epoch > 5``; here from
``start_step``, which the config derives from ``sam.start_epoch``), EMA decay 0.9998 (its
``--model-ema-decay``; a short run needs a smaller one). ``rho`` is not used.

Memory: one copy of the model's weights and buffers (the EMA), saved in
``state_dict()["sam"]`` with the step counter so a resume continues bit-identically. Cost: one
forward-backward and one forward per step. Under DDP every replica holds the same EMA (the same
weights after every step) and the loss's gradient is all-reduced.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sam_train.sam._options import within
from sam_train.sam.trajectory import TrajectorySAM


class MESA(TrajectorySAM):
    """The base optimizer on the loss plus a KL term towards an EMA model's outputs.

    Args:
        model: the (unwrapped) model whose weights the EMA follows.
        ema_decay: the EMA's decay per step, in [0, 1).
        start_step: the first step with the KL term.
        ``params``, ``base_optimizer`` and the other options as :class:`TrajectorySAM`
        (default lambda = 0.3, T = 5).
    """

    default_weight = 0.3  # MESA_train.py's --reinforce

    def __init__(
        self,
        *args: Any,
        model: nn.Module,
        ema_decay: float = 0.9998,
        start_step: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        within("MESA", "[0, 1)", ema_decay=ema_decay)
        # imported here, not above: timm loads torchvision and torch._dynamo, which made a
        # process that imports sam_train.sam, .step and .strategy take 5.4 s of CPU, not 3.2
        from timm.utils.model_ema import ModelEmaV3

        self.model = model
        self.ema = ModelEmaV3(model, decay=ema_decay)
        self.start_step = int(start_step)
        self.base_optimizer.register_step_post_hook(lambda *_: self.ema.update(self.model))

    @torch.no_grad()
    def perturb_before_pass(
        self, images: torch.Tensor | None = None, indices: torch.Tensor | None = None
    ) -> bool:
        """No perturbation: the EMA model's outputs on ``images`` (from ``start_step`` on),
        which the step's loss compares with the model's. Returns False (w is not moved)."""
        self.reference = None
        if images is not None and self._steps >= self.start_step:
            self.reference = self.ema.module(images).float()
        self._steps += 1
        return False

    def reference_forwards(self) -> int:
        """Examples the EMA model ran forward on for the coming pass (the step counts them)."""
        return 0 if self.reference is None else len(self.reference)

    def _extra_state(self) -> dict[str, Any]:
        return {
            **super()._extra_state(),
            "steps": self._steps,
            "ema": {k: v.clone() for k, v in self.ema.module.state_dict().items()},
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
        if "ema" in state:
            self.ema.module.load_state_dict(state["ema"])
