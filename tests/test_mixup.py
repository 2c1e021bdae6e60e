"""Mixup/CutMix (``augment.mixup_alpha``, ``augment.cutmix_alpha``): one mixing per batch,
before both SAM passes, sliced by accumulation and m-sharpness; timm's soft-target loss.
A mixed run that learns digits and resumes exactly: tests/test_ema.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config
from timm.loss import SoftTargetCrossEntropy

from sam_train.build import build_run
from sam_train.errors import ConfigError

MIXED = [
    "experiment=quickstart",
    "augment.mixup_alpha=0.8",
    "augment.cutmix_alpha=1.0",
    "trainer.label_smoothing=0.1",
]


class _Recording(torch.nn.Module):
    """The criterion, recording every (input, target) pair it scores."""

    def __init__(self, criterion: torch.nn.Module, seen: list) -> None:
        super().__init__()
        self.criterion, self.seen = criterion, seen

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.seen[-1].append(targets.clone())
        return self.criterion(logits, targets)


@pytest.mark.parametrize("split", [[], ["trainer.accum_steps=2"], ["sam.m=16"]])
def test_both_sam_passes_see_one_mixed_batch(split):
    cfg = compose_config([*MIXED, "trainer.batch_size=32", *split])
    run = build_run(cfg)
    step = run.step
    assert isinstance(step.criterion, SoftTargetCrossEntropy), "soft targets: timm's loss"
    assert step.mix.label_smoothing == 0.1, "label smoothing goes into the mixed targets"
    inputs: list[list[torch.Tensor]] = [[]]
    targets: list[list[torch.Tensor]] = [[]]
    run.model.register_forward_pre_hook(lambda _, args: inputs[-1].append(args[0].clone()))
    step.criterion = _Recording(step.criterion, targets)
    images, labels = next(iter(run.loaders.train))

    np.random.seed(1)  # timm's Mixup draws from NumPy's global generator
    expected_images, expected_targets = step.mix(images.clone(), labels.clone())
    np.random.seed(1)
    step(images.clone(), labels)

    pieces = len(inputs[0]) // 2  # first pass, then second pass, piece by piece
    assert pieces == (1 if not split else 2)
    if split == ["sam.m=16"]:  # chunk by chunk: first and second pass of chunk 1, then 2
        order = [0, 2, 1, 3]
        inputs[0] = [inputs[0][i] for i in order]
        targets[0] = [targets[0][i] for i in order]
    first, second = inputs[0][:pieces], inputs[0][pieces:]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b), "the second pass must see the first pass's mixed images"
    for a, b in zip(targets[0][:pieces], targets[0][pieces:], strict=True):
        assert torch.equal(a, b), "and its mixed targets"
    assert torch.equal(torch.cat(first), expected_images), "mixed once, then sliced"
    assert torch.equal(torch.cat(targets[0][:pieces]), expected_targets)
    assert not torch.equal(expected_images, images), "the batch was mixed"
    assert expected_targets.shape == (32, 10) and (expected_targets.max(1).values < 0.95).all()


def test_an_odd_batch_is_refused_with_one_line():
    cfg = compose_config([*MIXED, "trainer.batch_size=63"])
    with pytest.raises(ConfigError, match="Mixup/CutMix pairs images: the per-device batch 63"):
        build_run(cfg)
