"""Data sets from their real on-disk formats, label noise, and the missing-data message."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build_cifar

from sam_train.data import DatasetError, apply_label_noise, build_datasets, build_loaders


def test_digits_is_real_and_split_fixed():
    pair = build_datasets("digits", num_classes=10, seed=3)
    other = build_datasets("digits", num_classes=10, seed=4)
    assert len(pair.train) + len(pair.test) == 1797
    assert np.array_equal(pair.test.targets, other.test.targets)
    image, label = pair.train[0]
    assert image.shape == (1, 8, 8) and 0 <= label < 10
    stacked = torch.stack([pair.train[i][0] for i in range(len(pair.train))])
    assert abs(stacked.mean().item()) < 0.05 and abs(stacked.std().item() - 1) < 0.05


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_torchvision_format(tmp_path, name):
    from conftest import write_cifar

    root = write_cifar(tmp_path / "data", name)
    pair = build_cifar(root, name)
    assert (len(pair.train), len(pair.test)) == (40, 20)
    image, _label = pair.train[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32


@pytest.mark.parametrize("options", [{}, {"reprob": 0.5}])
def test_cifar_at_another_size_is_upsampled_with_imagenet_statistics(tiny_cifar10, options):
    """Table 3 fine-tunes ImageNet-pretrained models on CIFAR at their resolution: training
    crops and resizes to image_size; evaluation resizes the whole 32 px image (no centre
    crop) and normalizes with ImageNet's mean and std, which the pretrained weights expect."""
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from torchvision.transforms import v2

    pair = build_cifar(tiny_cifar10, image_size=48, transform_options=options)
    image, _label = pair.train[0]
    assert image.shape == (3, 48, 48) and image.dtype == torch.float32
    raw = v2.functional.to_image(pair.test.data[0])  # H x W x C uint8, as CIFAR keeps it
    resized = v2.functional.resize(raw, [48, 48], antialias=True).float() / 255
    expected = v2.functional.normalize(resized, IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)
    torch.testing.assert_close(pair.test[0][0], expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("augment", ["cutout", "autoaugment"])
def test_cifar_augmentations_of_32_px_images_are_refused_at_another_size(tiny_cifar10, augment):
    with pytest.raises(DatasetError) as err:
        build_cifar(tiny_cifar10, image_size=224, augment=augment)
    message = str(err.value)
    assert "\n" not in message and f"augment={augment} works on CIFAR's own 32 px" in message


def test_cifar_missing_names_root_and_files(tmp_path):
    with pytest.raises(DatasetError) as err:
        build_datasets("cifar100", root=str(tmp_path / "nowhere"), num_classes=100, download=False)
    message = str(err.value)
    assert "dataset.root=" in message and "nowhere" in message
    assert "cifar-100-python" in message and "train, test, meta" in message


def test_cifar_checksums_are_verified_by_default(tiny_cifar10):
    with pytest.raises(DatasetError, match="cifar10"):
        build_datasets("cifar10", root=str(tiny_cifar10), num_classes=10, download=False)


def test_imagenet_folder(tiny_imagenet):
    pair = build_datasets("imagenet", root=str(tiny_imagenet), num_classes=3, image_size=32)
    assert len(pair.train) == 12 and len(pair.test) == 12
    assert pair.train[0][0].shape == (3, 32, 32)
    assert pair.test[0][0].shape == (3, 32, 32)


def test_imagenet_missing_split_is_named(tmp_path):
    (tmp_path / "imagenet" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="val"):
        build_datasets("imagenet", root=str(tmp_path / "imagenet"), num_classes=3)


def test_label_noise_fraction_and_reproducibility():
    clean = np.arange(10_000) % 10
    noisy = apply_label_noise(clean, 10, 0.4, seed=1)
    again = apply_label_noise(clean, 10, 0.4, seed=1)
    other = apply_label_noise(clean, 10, 0.4, seed=2)
    assert np.array_equal(noisy, again) and not np.array_equal(noisy, other)
    changed = (noisy != clean).mean()
    assert changed == pytest.approx(0.4 * 0.9, abs=0.02)  # 1 in 10 redraws keeps its label
    assert set(np.unique(noisy)) == set(range(10))


def test_label_noise_reaches_the_training_set_only(tiny_cifar10):
    clean = build_cifar(tiny_cifar10)
    noisy = build_cifar(tiny_cifar10, label_noise=1.0, seed=0)
    assert noisy.train.targets != clean.train.targets
    assert noisy.test.targets == clean.test.targets
    digits_noisy = build_datasets("digits", num_classes=10, label_noise=0.5, seed=0)
    digits_clean = build_datasets("digits", num_classes=10)
    assert (digits_noisy.train.targets != digits_clean.train.targets).mean() > 0.3
    assert digits_noisy.train[0][1] == digits_noisy.train.targets[0]


def test_loaders_drop_partial_train_batches_and_keep_all_test_images():
    pair = build_datasets("digits", num_classes=10)
    loaders = build_loaders(
        pair.train, pair.test, batch_size=100, eval_batch_size=64, num_workers=0, seed=0
    )
    assert len(loaders.train) == len(pair.train) // 100
    assert sum(len(y) for _, y in loaders.test) == len(pair.test)


def test_shard_sampler_covers_each_example_once():
    from sam_train.data.samplers import ShardSampler

    shards = [list(ShardSampler(11, rank, 3)) for rank in range(3)]
    assert sorted(i for shard in shards for i in shard) == list(range(11))
