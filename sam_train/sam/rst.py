"""Randomized Sharpness-Aware Training (Zhao, Zhang & Hu, 2022, "Randomized Sharpness-Aware
Training for Boosting Computational Efficiency in Deep Learning", arXiv:2203.09962).

Each step is a Bernoulli trial: a SAM step with probability p_t, the base optimizer's plain step
(one forward-backward pass, the gradient at w applied unchanged) otherwise. The trials come from
a generator of their own, seeded with the run's seed so that every DDP replica draws the same
trial (a replica skipping the second pass while another runs it would stall the all-reduce),
and saved in ``state_dict()["sam"]`` with the step counter t, so a resume draws the same
sequence at the same point of the schedule.

The schedule over the run's T optimizer steps (t = 0 .. T-1, held at its end value past T):

    p_t = p_start + (p_end - p_start) * shape(t / T)

with shape ``constant`` (0: p_t = p_start, the default), ``linear`` (x), ``cosine``
((1 - cos(pi x)) / 2) or ``step`` (0 before the run's half, 1 from it).

What was checked against the paper: only its abstract (a Bernoulli trial per step between SGD
and SAM with a probability given by a predefined scheduling function; the computation and
effect of various scheduling functions are studied; G-RST). Its full text and any official
code could not be reached, so the family of shapes above is this project's, not a copy of the
paper's scheduling functions, and G-RST is not implemented. The constant schedule with
p = 0.5 is the setting the abstract's "saving 50% extra computation cost" refers to.

Cost per step: on average 1 + p_t forward-backward passes; memory as SAM.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from sam_train.sam._options import within
from sam_train.sam.sam import SAM

#: shape(x) for x = t / T in [0, 1]; the config's sam.probability_schedule choices (schema's
#: RST_SCHEDULES, a test holds the two equal).
SCHEDULE_SHAPES: dict[str, Callable[[float], float]] = {
    "constant": lambda x: 0.0,
    "linear": lambda x: x,
    "cosine": lambda x: (1.0 - math.cos(math.pi * x)) / 2.0,
    "step": lambda x: 0.0 if x < 0.5 else 1.0,
}


class RandomizedSAM(SAM):
    """SAM with probability p_t per step, the base step otherwise.

    Args:
        probability: p_start, the chance that a step is a SAM step at the run's start (the
            whole run's under the constant schedule), in [0, 1].
        probability_end: p_end, in [0, 1]; None keeps p_start.
        probability_schedule: the shape of p_t between them, a key of ``SCHEDULE_SHAPES``.
        seed: seeds the trials' generator (the same on every replica).
        total_steps: T, the run's optimizer steps; needed by every schedule but ``constant``.
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    #: The trial is drawn from a CPU generator and read on the host: no device sync on a GPU,
    #: but counted by the sync-free step's test, which holds other variants to zero.
    host_reads_per_step = 1

    def __init__(
        self,
        *args: Any,
        probability: float = 0.5,
        probability_end: float | None = None,
        probability_schedule: str = "constant",
        seed: int = 0,
        total_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        end = probability if probability_end is None else probability_end
        within("RandomizedSAM", "[0, 1]", probability=probability, probability_end=end)
        if probability_schedule not in SCHEDULE_SHAPES:
            raise ValueError(
                f"RandomizedSAM needs probability_schedule in {', '.join(SCHEDULE_SHAPES)}, "
                f"got {probability_schedule!r}"
            )
        if probability_schedule != "constant" and (total_steps is None or total_steps < 1):
            raise ValueError(
                f"RandomizedSAM's {probability_schedule} schedule needs total_steps >= 1, "
                f"got {total_steps}"
            )
        self.probability = float(probability)
        self.probability_end = float(end)
        self.probability_schedule = probability_schedule
        self.total_steps = total_steps
        self._trials = torch.Generator().manual_seed(int(seed))
        self._decided: tuple[int, bool] | None = None  # (the step it is for, the trial)

    def probability_at(self, step: int) -> float:
        """p_t at optimizer step ``step`` (0-based), on the host: the trial's threshold."""
        if self.probability_schedule == "constant":
            return self.probability
        fraction = min(step / self.total_steps, 1.0)
        shape = SCHEDULE_SHAPES[self.probability_schedule](fraction)
        return self.probability + (self.probability_end - self.probability) * shape

    def will_perturb(self) -> bool:
        # One trial per step, however often the step asks (the sync decision, first_step).
        if self._decided is None or self._decided[0] != self._steps:
            draw = torch.rand((), generator=self._trials).item()
            self._decided = (self._steps, draw < self.probability_at(self._steps))
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
