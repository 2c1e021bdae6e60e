"""Randomized Sharpness-Aware Training (Zhao, Zhang & Hu, 2022, "Randomized Sharpness-Aware
Training for Boosting Computational Efficiency in Deep Learning").

Each step is a Bernoulli trial: a SAM step with probability p, the base optimizer's plain step
(one forward-backward pass, the gradient at w applied unchanged) otherwise. The paper studies
scheduling functions for p_t; the one implemented here is its constant schedule (p = 0.5 halves
SAM's extra cost, the setting of the paper's headline comparison). The trials come from a
generator of their own, seeded with the run's seed so that every DDP replica draws the same
trial (a replica skipping the second pass while another runs it would stall the all-reduce),
and saved in ``state_dict()["sam"]`` so a resume draws the same sequence.

Cost per step: on average 1 + p forward-backward passes; memory as SAM.
"""

from __future__ import annotations

from typing import Any

import torch

from sam_train.sam._options import within
from sam_train.sam.sam import SAM


class RandomizedSAM(SAM):
    """SAM with probability ``probability`` per step, the base step otherwise.

    Args:
        probability: p, the chance that a step is a SAM step, in [0, 1].
        seed: seeds the trials' generator (the same on every replica).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    #: The trial is drawn from a CPU generator and read on the host: no device sync on a GPU,
    #: but counted by the sync-free step's test, which holds other variants to zero.
    host_reads_per_step = 1

    def __init__(self, *args: Any, probability: float = 0.5, seed: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        within("RandomizedSAM", "[0, 1]", probability=probability)
        self.probability = float(probability)
        self._trials = torch.Generator().manual_seed(int(seed))
        self._decided: tuple[int, bool] | None = None  # (the step it is for, the trial)

    def will_perturb(self) -> bool:
        # One trial per step, however often the step asks (the sync decision, first_step).
        if self._decided is None or self._decided[0] != self._steps:
            draw = torch.rand((), generator=self._trials).item()
            self._decided = (self._steps, draw < self.probability)
        return self._decided[1]

    def _extra_state(self) -> dict[str, Any]:
        return {
            **super()._extra_state(),
            "steps": self._steps,
            "trials": self._trials.get_state(),
            "decided": self._decided,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
        if "trials" in state:
            self._trials.set_state(state["trials"])
        decided = state.get("decided")
        self._decided = None if decided is None else (int(decided[0]), bool(decided[1]))
