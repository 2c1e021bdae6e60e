"""The augment group: CIFAR basic / cutout / AutoAugment pipelines, wired through the data sets."""

from __future__ import annotations

import pytest
import torch
from conftest import build_cifar, compose_config, config_refusal, write_cifar
from torchvision.transforms import v2

from sam_train.config import validate
from sam_train.data import DatasetError, build_datasets
from sam_train.data.transforms import Cutout, cifar_transforms


def _zero_box(image: torch.Tensor) -> tuple[int, int, int]:
    """(pixels zero in every channel, height and width of their bounding box)."""
    zero = (image == 0).all(dim=0)
    rows, cols = zero.any(dim=1).nonzero(), zero.any(dim=0).nonzero()
    if not len(rows):
        return 0, 0, 0
    height = int(rows.max() - rows.min() + 1)
    width = int(cols.max() - cols.min() + 1)
    return int(zero.sum()), height, width


def test_cutout_zeroes_one_square_centred_anywhere_and_clipped_at_the_border():
    torch.manual_seed(0)
    cutout = Cutout(16)
    image = torch.ones(3, 32, 32)
    boxes = [_zero_box(cutout(image)) for _ in range(300)]
    assert torch.equal(image, torch.ones(3, 32, 32)), "the input must not be modified"
    for area, height, width in boxes:
        assert area == height * width, "the erased pixels form one rectangle"
        assert 8 <= height <= 16 and 8 <= width <= 16
    assert any(area == 256 for area, _, _ in boxes), "inside the image: a full 16x16 square"
    assert any(area < 256 for area, _, _ in boxes), "near a border: clipped"


@pytest.mark.parametrize(
    ("augment", "has_autoaugment", "has_cutout"),
    [("basic", False, False), ("cutout", False, True), ("autoaugment", True, True)],
)
def test_cifar_pipelines_follow_the_paper_columns(augment, has_autoaugment, has_cutout):
    steps = cifar_transforms(True, augment).transforms
    kinds = [type(step) for step in steps]
    assert (v2.AutoAugment in kinds) == has_autoaugment
    assert (Cutout in kinds) == has_cutout
    assert v2.RandomCrop in kinds and v2.RandomHorizontalFlip in kinds
    if has_autoaugment:  # the policy first, on the uint8 image, then crop and flip
        assert kinds[0] is v2.AutoAugment and steps[0].policy == v2.AutoAugmentPolicy.CIFAR10
    if has_cutout:  # on the normalized tensor, last
        assert kinds[-1] is Cutout and steps[-1].size == 16
    assert [type(s) for s in cifar_transforms(False, augment).transforms] == [
        v2.ToImage,
        v2.ToDtype,
        v2.Normalize,
    ]


@pytest.mark.parametrize("augment", ["cutout", "autoaugment"])
def test_augment_reaches_the_cifar_training_set_only(tmp_path, augment):
    root = write_cifar(tmp_path / "data", "cifar10", per_split=(10, 10))
    torch.manual_seed(0)
    pair = build_cifar(root, augment=augment)
    train_boxes = [_zero_box(pair.train[i][0]) for i in range(len(pair.train))]
    test_boxes = [_zero_box(pair.test[i][0]) for i in range(len(pair.test))]
    assert all(area >= 64 for area, _, _ in train_boxes), "every training image has a cutout"
    assert all(area == 0 for area, _, _ in test_boxes)


def test_augment_for_other_data_is_refused_with_one_line():
    with pytest.raises(DatasetError, match="augment=cutout is for CIFAR"):
        build_datasets("digits", num_classes=10, augment="cutout")
    # digits by default
    assert "augment=autoaugment is for CIFAR" in config_refusal(["augment=autoaugment"])
    cfg = compose_config(["dataset=cifar100", "augment=autoaugment"])
    validate(cfg)
    assert (cfg.augment.name, cfg.augment.cutout_size) == ("autoaugment", 16)
