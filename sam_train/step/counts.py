"""What the step computed: forward and backward passes counted per example, and the steps that
took SAM's ascent, so a variant's cost in results.json is measured, not what it claims.

Counts are Python integers (batch sizes and the variants' decisions, already on the host): no
device sync. A forward costs about a third of a forward-backward, so one pass-equivalent is
``(forward examples + 2 * backward examples) / (3 * batch examples)``: SGD's is 1, SAM's 2.

A backward may skip weight gradients (ESAM's stochastic weight perturbation freezes the tensors
it does not perturb for the first backward), which ``passes_per_step`` cannot see: each backward
also counts its examples times the share of parameter elements that require a gradient then
(metadata, read on the host: no device sync), so ``weight_grad_fraction_per_step`` is SGD's 1,
SAM's 2, and less where weight gradients were really not computed. Where they are computed and
dropped (ESAM under DDP/FSDP) it says what was computed.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch


@dataclass
class PassCounts:
    steps: int = 0
    examples: int = 0  # in the steps' (per-device) batches
    forward_examples: int = 0
    backward_examples: int = 0
    ascent_steps: int = 0  # steps that perturbed the weights (SAM's second pass, MSAM's)
    weight_grad_examples: float = 0.0  # backward examples x share of weight gradients computed

    def add_pass(self, examples: int, backward: bool = True, grad_share: float = 1.0) -> None:
        """One forward over ``examples`` examples, and its backward unless ``backward=False``,
        which computed the weight gradients of ``grad_share`` of the parameter elements."""
        self.forward_examples += examples
        self.backward_examples += examples if backward else 0
        self.weight_grad_examples += examples * grad_share if backward else 0.0

    def summary(self) -> dict[str, float | None]:
        """Averages per step for results.json (None before the first step)."""
        if not self.steps:
            return dict.fromkeys(SUMMARY_KEYS)
        batch = self.examples / self.steps
        forward, backward = self.forward_examples / self.steps, self.backward_examples / self.steps
        values = (
            (forward + 2 * backward) / (3 * batch),
            forward,
            backward,
            self.ascent_steps / self.steps,
            self.weight_grad_examples / self.steps / batch,
        )
        return {key: round(value, 4) for key, value in zip(SUMMARY_KEYS, values, strict=True)}

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


#: results.json's keys for the counts, in the order ``PassCounts.summary`` computes them.
SUMMARY_KEYS = (
    "passes_per_step",
    "forward_examples_per_step",
    "backward_examples_per_step",
    "ascent_fraction",
    "weight_grad_fraction_per_step",
)


def grad_share(params: Sequence[torch.Tensor]) -> float:
    """The share of ``params``' elements whose gradient a backward run now computes (those
    that require one), from tensor metadata only: no device sync. 1 without a loop in Python
    when all do (every pass but the first of ESAM's stochastic weight perturbation)."""
    if all(map(_requires_grad, params)):
        return 1.0
    total = computed = 0
    for p in params:
        total += p.numel()
        computed += p.numel() if p.requires_grad else 0
    return computed / total if total else 1.0


_requires_grad = operator.attrgetter("requires_grad")
