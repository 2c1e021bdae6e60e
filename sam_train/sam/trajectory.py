"""The base of SAF and MESA (Du et al., NeurIPS 2022): one forward-backward pass per step,
no perturbation, and a loss whose KL term (``sam_train.step.trajectory.TrajectoryLoss``) pulls
the outputs towards ``reference`` outputs the variant sets before the pass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sam_train.sam.sam import SAM


class TrajectorySAM(SAM):
    """The base optimizer on the loss plus lambda * T^2 * KL(reference / T || outputs / T).

    Args:
        trajectory_weight: lambda, >= 0; None is the variant's ``default_weight``.
        temperature: T, > 0; None is the variant's ``default_temperature``.
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    single_pass = True
    default_weight: float  # lambda as the variant's official code sets it
    default_temperature = 5.0  # T, the same (5) in SAF's and MESA's official code

    def __init__(
        self,
        *args: Any,
        trajectory_weight: float | None = None,
        temperature: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if trajectory_weight is None:
            trajectory_weight = self.default_weight
        if temperature is None:
            temperature = self.default_temperature
        if temperature <= 0 or trajectory_weight < 0:
            raise ValueError(f"{type(self).__name__} needs temperature > 0 and weight >= 0")
        self.trajectory_weight, self.temperature = float(trajectory_weight), float(temperature)
        self.reference: torch.Tensor | None = None  # the coming pass's reference outputs

    def will_perturb(self) -> bool:
        return False

    def record(self, logits: torch.Tensor) -> None:
        """The pass's outputs, from the trajectory loss (SAF keeps them; MESA does not)."""

    def first_step(
        self, zero_grad: bool = False, ascent_closure: Callable[[], Any] | None = None
    ) -> bool:
        raise RuntimeError(f"{type(self).__name__} takes one pass: see perturb_before_pass")
