"""K-SAM (Ni et al., 2022, "K-SAM: Sharpness-Aware Minimization at the Speed of SGD"): both of
SAM's gradients, the ascent's and the one at w + eps, on only the k highest-loss examples of
the batch; a forward without gradients over the whole batch ranks them
(``sam_train.step.selection``). k = ``select_fraction`` * batch (at least 1).

Default select_fraction = 0.5 (this project's pick; tune it). Cost per step, counted: a
forward over the batch and two forward-backwards over k examples. The descent uses only the k
examples' gradient.
"""

from __future__ import annotations

from typing import Any

from sam_train.sam._options import one_ascent_step, within
from sam_train.sam.sam import SAM


class KSAM(SAM):
    """SAM on the k highest-loss examples of each batch.

    Args:
        select_fraction: k / batch, in (0, 1].
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    selects_examples = True
    select_before_ascent = True

    def __init__(self, *args: Any, select_fraction: float = 0.5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        within("KSAM", "(0, 1]", select_fraction=select_fraction)
        one_ascent_step("KSAM", self.inner_steps)
        self.select_fraction = float(select_fraction)
