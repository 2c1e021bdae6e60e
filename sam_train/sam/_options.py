"""The SAM variants' shared argument checks (with ``sam.non_negative``): one place that says
what an interval means and how a refused value is worded."""

from __future__ import annotations

import operator


def within(variant: str, interval: str, **values: float) -> None:
    """A ValueError naming the first of ``values`` outside ``interval``, written as the message
    shows it: ``"[0, 1)"``, ``"(0, 1]"``, ``"[0, 1]"`` (a square bracket includes its end)."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above_low = operator.le if interval[0] == "[" else operator.lt
    below_high = operator.le if interval[-1] == "]" else operator.lt
    for name, value in values.items():
        if not (above_low(low, value) and below_high(value, high)):
            raise ValueError(f"{variant} needs {name} in {interval}, got {value}")


def one_ascent_step(variant: str, inner_steps: int) -> None:
    """A ValueError unless ``inner_steps`` is 1: the variants defined for one ascent only."""
    if inner_steps != 1:
        raise ValueError(f"{variant} takes one ascent step (inner_steps=1)")
