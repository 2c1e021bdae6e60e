"""The variants' shared argument checks: interval ends, the message, and a variant using them."""

from __future__ import annotations

import pytest
import torch

from sam_train.sam._options import one_ascent_step, within
from sam_train.sam.esam import ESAM
from sam_train.sam.fsam import FriendlySAM
from sam_train.sam.rst import RandomizedSAM


@pytest.mark.parametrize(
    ("interval", "accepted", "refused"),
    [
        ("[0, 1)", [0.0, 0.5], [-0.1, 1.0, float("nan")]),
        ("(0, 1]", [1.0, 0.5], [0.0, 1.1, float("nan")]),
        ("[0, 1]", [0.0, 1.0], [-1e-9, 1.0 + 1e-9]),
    ],
)
def test_within_includes_a_square_brackets_end_only(interval, accepted, refused):
    for value in accepted:
        within("V", interval, x=value)
    for value in refused:
        with pytest.raises(ValueError, match=rf"^V needs x in \{interval[0]}0, 1\{interval[-1]}"):
            within("V", interval, x=value)


def test_one_ascent_step_refuses_more_than_one():
    one_ascent_step("V", 1)
    with pytest.raises(ValueError, match=r"V takes one ascent step \(inner_steps=1\)"):
        one_ascent_step("V", 2)


def _w() -> list[torch.Tensor]:
    return [torch.zeros(3, requires_grad=True)]


def test_the_variants_refuse_through_the_shared_checks():
    with pytest.raises(ValueError, match=r"Friendly SAM needs ema_decay in \[0, 1\), got 1.0"):
        FriendlySAM(_w(), torch.optim.SGD, lr=0.1, ema_decay=1.0)
    with pytest.raises(ValueError, match=r"ESAM needs select_fraction in \(0, 1\], got 0.0"):
        ESAM(_w(), torch.optim.SGD, lr=0.1, select_fraction=0.0)
    with pytest.raises(ValueError, match=r"RandomizedSAM needs probability in \[0, 1\]"):
        RandomizedSAM(_w(), torch.optim.SGD, lr=0.1, probability=1.5)
    with pytest.raises(ValueError, match=r"RandomizedSAM needs probability_end in \[0, 1\]"):
        RandomizedSAM(_w(), torch.optim.SGD, lr=0.1, probability_end=-0.5)
    with pytest.raises(ValueError, match="RandomizedSAM needs probability_schedule in constant"):
        RandomizedSAM(_w(), torch.optim.SGD, lr=0.1, probability_schedule="exp")
    with pytest.raises(ValueError, match="linear schedule needs total_steps >= 1, got None"):
        RandomizedSAM(_w(), torch.optim.SGD, lr=0.1, probability_schedule="linear")
    with pytest.raises(ValueError, match=r"Friendly SAM takes one ascent step"):
        FriendlySAM(_w(), torch.optim.SGD, lr=0.1, inner_steps=2)
