"""SAF, Sharpness-Aware Training for Free (Du, Zhou, Feng, Tan & Zhou, NeurIPS 2022; official
code AngusDujw/SAF, ``SAF_train.py``).

One forward-backward pass per step, with no perturbation: the loss gains a trajectory term,
the KL divergence between each example's outputs recorded ``past_epochs`` epochs earlier and
its current outputs, softened by a temperature T (``sam_train.step.trajectory``):

    loss = CE(f_w(x_i), y_i) + lambda * T^2 * KL(softmax(z_i / T) || softmax(f_w(x_i) / T))

with z_i the stored outputs of example i from epoch e - past_epochs. Every step records the
batch's outputs (the pass's logits, before the update) in epoch e's slot of a store of
``past_epochs + 1`` output vectors per training example, so the loader must hand the step each
example's index (``with_indices``). As the official code: slot ``e % (past_epochs + 1)``, the
term only after ``start_epoch`` (``epoch > start_epoch``), defaults lambda = 0.16
(``--reinforce``), T = 5, start_epoch = 5, past_epochs = 3 (``--minus_epoch``).

Memory: the store, N x (past_epochs + 1) x classes floats on the model's device (digits:
1347 x 4 x 10; CIFAR-100: 50 000 x 4 x 100 = 80 MB), saved in ``state_dict()["sam"]`` (every
checkpoint carries it). Cost: SGD's one forward-backward. One process only: under DDP each
rank would record only its own examples (refused when the run is built).
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam.trajectory import TrajectorySAM


class SAF(TrajectorySAM):
    """The base optimizer on the loss plus a KL term towards each example's past outputs.

    Args:
        num_examples: N, the training set's size (the store's rows).
        steps_per_epoch: turns the step counter into the epoch.
        start_epoch: the term after this epoch.
        past_epochs: how many epochs back the reference outputs are (Ẽ >= 1).
        ``params``, ``base_optimizer`` and the other options as :class:`TrajectorySAM`
        (default lambda = 0.16, T = 5).
    """

    default_weight = 0.16  # SAF_train.py's --reinforce

    def __init__(
        self,
        *args: Any,
        num_examples: int,
        steps_per_epoch: int,
        start_epoch: int = 5,
        past_epochs: int = 3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if min(num_examples, steps_per_epoch, past_epochs) < 1:
            raise ValueError("SAF needs num_examples, steps_per_epoch and past_epochs >= 1")
        self.num_examples, self.steps_per_epoch = int(num_examples), int(steps_per_epoch)
        self.start_epoch, self.past_epochs = int(start_epoch), int(past_epochs)
        self.store: torch.Tensor | None = None  # N x (past_epochs + 1) x classes
        self._pending: tuple[torch.Tensor, int] | None = None  # (indices, slot) to record

    def perturb_before_pass(
        self, images: torch.Tensor | None = None, indices: torch.Tensor | None = None
    ) -> bool:
        """No perturbation: the batch's stored outputs from ``past_epochs`` ago (after
        ``start_epoch``), and where the pass's outputs will be recorded."""
        if indices is None:
            raise RuntimeError("SAF needs each example's index: a loader with_indices")
        epoch = self._steps // self.steps_per_epoch
        self._steps += 1
        slots = self.past_epochs + 1
        indices = indices.to(images.device if images is not None else "cpu")
        self._pending = (indices, epoch % slots)
        self.reference = None
        if epoch > self.start_epoch and self.store is not None:
            self.reference = self.store[indices, (epoch - self.past_epochs) % slots]
        return False

    @torch.no_grad()
    def record(self, logits: torch.Tensor) -> None:
        """Keep the pass's outputs for the batch's examples (called by the trajectory loss)."""
        if self._pending is None:
            return
        indices, slot = self._pending
        self._pending = None
        if self.store is None:
            shape = (self.num_examples, self.past_epochs + 1, logits.shape[-1])
            self.store = torch.zeros(shape, device=logits.device)
        self.store[indices, slot] = logits.detach().float()

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "steps": self._steps, "store": self.store}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
        store = state.get("store")
        if store is not None:
            device = self.param_groups[0]["params"][0].device
            self.store = store.to(device)
