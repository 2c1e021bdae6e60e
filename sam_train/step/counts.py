"""What the step computed: forward and backward passes counted per example, and the steps that
took SAM's ascent, so a variant's cost in results.json is measured, not what it claims.

Counts are Python integers (batch sizes and the variants' decisions, already on the host): no
device sync. A forward costs about a third of a forward-backward, so one pass-equivalent is
``(forward examples + 2 * backward examples) / (3 * batch examples)``: SGD's is 1, SAM's 2.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class PassCounts:
    steps: int = 0
    examples: int = 0  # in the steps' (per-device) batches
    forward_examples: int = 0
    backward_examples: int = 0
    ascent_steps: int = 0  # steps that perturbed the weights (SAM's second pass, MSAM's)

    def add_pass(self, examples: int, backward: bool = True) -> None:
        """One forward over ``examples`` examples, and its backward unless ``backward=False``."""
        self.forward_examples += examples
        self.backward_examples += examples if backward else 0

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
        )
        return {key: round(value, 4) for key, value in zip(SUMMARY_KEYS, values, strict=True)}

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


#: results.json's keys for the counts, in the order ``PassCounts.summary`` computes them.
SUMMARY_KEYS = (
    "passes_per_step",
    "forward_examples_per_step",
    "backward_examples_per_step",
    "ascent_fraction",
)
