"""ESAM (Du et al., ICLR 2022, "Efficient Sharpness-aware Minimization for Improved Training of
Neural Networks"; official code dydjw9/Efficient_SAM) with both of its strategies:

* stochastic weight perturbation, beta = ``perturb_fraction`` (the base class's option), as
  the official code: each parameter tensor is perturbed with probability beta, eps = rho /
  beta * g_S / ||g_S||, and the first backward does not compute the other tensors' weight
  gradients (one process; computed and dropped under DDP and FSDP);
* sharpness-sensitive data selection, gamma = ``select_fraction``: after the ascent, a forward
  without gradients ranks the batch's examples by how much their loss rose, and the second
  forward-backward runs on the top fraction only (``sam_train.step.selection``), as the
  official code does (including its strict cutoff: one example fewer than gamma * batch).

Defaults beta = gamma = 0.5 (the official run.sh). Cost per step, counted: a forward-backward
over the batch (its weight gradients for about beta of the tensors), a forward over the batch,
and a forward-backward over about gamma of it.
"""

from __future__ import annotations

from typing import Any

from sam_train.sam._options import one_ascent_step, within
from sam_train.sam.sam import SAM


class ESAM(SAM):
    """SAM whose second pass runs on the examples most sensitive to eps.

    Args:
        select_fraction: gamma in (0, 1]; 1 turns the data selection off.
        perturb_fraction: beta, as :class:`SAM` (default here 0.5).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    #: The selected examples (scores above a threshold) are a subset of data-dependent size,
    #: whose count the host must know; the sync-free step's test holds others to zero reads.
    host_reads_per_step = 1

    def __init__(
        self, *args: Any, select_fraction: float = 0.5, perturb_fraction: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(*args, perturb_fraction=perturb_fraction, **kwargs)
        within("ESAM", "(0, 1]", select_fraction=select_fraction)
        one_ascent_step("ESAM", self.inner_steps)
        self.select_fraction = float(select_fraction)
        self.selects_examples = self.select_fraction < 1.0
