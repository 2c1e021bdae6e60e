"""``augment`` options from timm's create_transform (RandAugment, TrivialAugment, AugMix,
random erasing, colour jitter) on CIFAR and ImageFolder data; the GPU loader refuses them."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import build_cifar, compose_config, write_cifar, write_image_folder
from PIL import Image
from timm.data.auto_augment import AugMixAugment, AutoAugment, RandAugment
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as classic
from torchvision.transforms import v2

from sam_train.build import build_run_loaders
from sam_train.config import ConfigError, validate
from sam_train.config.schema import transform_options
from sam_train.data import build_datasets
from sam_train.data.samplers import EpochSeededDataset
from sam_train.data.transforms import Cutout, cifar_transforms, imagenet_transforms
from sam_train.strategy import SingleProcess

OPTIONS = [
    ("augment.auto_augment=rand-m9-mstd0.5", RandAugment),
    ("augment.auto_augment=ta_wide", v2.TrivialAugmentWide),
    ("augment.auto_augment=augmix-m3-w3", AugMixAugment),
    ("augment.auto_augment=original", AutoAugment),
    ("augment.reprob=0.25", RandomErasing),
    ("augment.color_jitter=0.4", classic.ColorJitter),
]


def _options(override: str, augment: str = "basic") -> dict:
    cfg = compose_config(["dataset=cifar10", f"augment={augment}", override])
    validate(cfg)
    return transform_options(cfg.augment)


def _image(size: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize(("override", "kind"), OPTIONS)
def test_each_option_builds_and_transforms_a_tiny_image(override, kind):
    options = _options(override)
    for pipeline, size in (
        (cifar_transforms(True, "cutout", 16, options), 32),
        (imagenet_transforms(True, 24, options), 24),
    ):
        kinds = [type(step) for step in pipeline.transforms]
        assert kind in kinds, kinds
        assert kinds[1] is v2.RandomHorizontalFlip, "timm's stages come after crop and flip"
        out = pipeline(_image(40))
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert type(cifar_transforms(True, "cutout", 16, options).transforms[-1]) is Cutout
    assert cifar_transforms(False, "basic").transforms[0].__class__ is v2.ToImage


def test_random_erasing_erases_and_no_option_keeps_the_v2_pipeline():
    options = {"reprob": 1.0, "remode": "const", "recount": 1}
    torch.manual_seed(0)
    erased = [cifar_transforms(True, "basic", 16, options)(_image(32)) for _ in range(20)]
    assert all((image == 0).all(dim=0).sum() > 0 for image in erased), "a zero box each time"
    assert [type(s) for s in cifar_transforms(True, "basic", 16, {}).transforms] == [
        v2.RandomCrop,
        v2.RandomHorizontalFlip,
        v2.ToImage,
        v2.ToDtype,
        v2.Normalize,
    ]


def test_options_reach_the_training_sets_and_repeat_per_epoch_and_index(tmp_path):
    cifar = write_cifar(tmp_path / "cifar", "cifar10", per_split=(10, 10))
    folder = write_image_folder(tmp_path / "folder", per_class=2, size=36)
    options = {"auto_augment": "rand-m9-mstd0.5", "reprob": 0.5, "remode": "pixel", "recount": 1}
    cifar_pair = build_cifar(cifar, transform_options=options)
    folder_pair = build_datasets(
        "imagenet", root=str(folder), num_classes=3, image_size=24, transform_options=options
    )
    cfg = compose_config(["dataset=cifar10", "augment.reprob=0.5", "trainer.num_workers=0"])
    loader = build_run_loaders(cfg, cifar_pair, SingleProcess(), batch=4).train
    assert loader.dataset.dataset.host_rngs, "the training loader seeds Python's and NumPy's"
    for pair in (cifar_pair, folder_pair):
        assert RandAugment in [type(t) for t in pair.train.transform.transforms]
        assert RandAugment not in [type(t) for t in pair.test.transform.transforms]
        seeded = EpochSeededDataset(pair.train, seed=0, host_rngs=True)
        states = random.getstate(), np.random.get_state()[1].copy()
        first, again, later = seeded[(0, 1)][0], seeded[(0, 1)][0], seeded[(1, 1)][0]
        assert torch.equal(first, again), "a resumed epoch augments the image the same way"
        assert not torch.equal(first, later), "another epoch, another augmentation"
        assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        *[
            (
                ["dataset.loader=gpu", override],
                f"dataset.loader=gpu implements random crop and "
                f"flip only; {override} needs dataset.loader=dataloader",
            )
            for override, _ in OPTIONS
        ],
        (["dataset=digits", "augment.reprob=0.25"], "augment.reprob is one of timm's"),
        (["augment=autoaugment", "augment.auto_augment=ta_wide"], "already applies the CIFAR-10"),
        (
            ["augment.auto_augment=rand-m9", "augment.color_jitter=0.4"],
            "augment.color_jitter is off under augment.auto_augment",
        ),
        (["augment.auto_augment=randaugment"], "augment.auto_augment='randaugment' is not one of"),
        (["augment.remode=zeros"], "augment.remode='zeros' is not one of: pixel, const, rand"),
    ],
)
def test_bad_transform_options_are_one_line(overrides, message):
    cfg = compose_config(["dataset=cifar10", *overrides])
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        validate(cfg)
    assert "\n" not in str(err.value)
