"""SAM every k-th step, the base optimizer's plain step otherwise (the ``interval`` option of
MosaicML Composer's SAM algorithm; also the periodic baseline of the LookSAM paper).

Steps without SAM take one forward-backward pass: ``first_step`` returns False and keeps the
gradient at w, which the base optimizer then applies unchanged.

Default: k = 2. Extra cost per step: on average 1/k forward-backward passes over the base
optimizer's one; memory as SAM (one copy of the weights).
"""

from __future__ import annotations

from typing import Any

from sam_train.sam.sam import SAM


class IntervalSAM(SAM):
    """SAM on steps 0, k, 2k, ...; plain base-optimizer steps in between.

    Args:
        k: SAM once every k steps (k = 1 is SAM).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    def __init__(self, *args: Any, k: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if int(k) != k or k < 1:
            raise ValueError(f"{type(self).__name__} needs an integer k >= 1, got {k}")
        self.k = int(k)

    def will_perturb(self) -> bool:
        return self._steps % self.k == 0

    def _extra_state(self) -> dict[str, Any]:
        return {**super()._extra_state(), "steps": self._steps}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
