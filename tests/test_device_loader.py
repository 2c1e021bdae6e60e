"""The device-resident CIFAR loader (dataset.loader=gpu), run on the CPU device.

Its augmentation is checked against torchvision's functional ops with the same offsets, its
shuffling and draws against its seed, its sharding against DistributedSampler's contract.
"""

from __future__ import annotations

import pytest
import torch
from conftest import build_cifar
from torchvision.transforms.v2 import functional as TF

from sam_train.config import validate
from sam_train.data import DatasetError, build_loaders
from sam_train.data.constants import CIFAR_MEAN, CIFAR_STD
from sam_train.data.datasets import TensorImageDataset
from sam_train.data.device_loader import DeviceLoader, crop_flip
from sam_train.errors import ConfigError


def _images(n: int, seed: int = 0, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def _reference(image: torch.Tensor, top: int, left: int, flip: bool, padding: int = 4):
    """torchvision's pad -> crop -> flip -> to float -> normalize for one image."""
    height, width = image.shape[-2:]
    out = TF.crop(TF.pad(image, [padding], fill=0), top, left, height, width)
    if flip:
        out = TF.horizontal_flip(out)
    return TF.normalize(TF.to_dtype(out, torch.float32, scale=True), CIFAR_MEAN, CIFAR_STD)


def _loader(images: torch.Tensor, **kwargs) -> DeviceLoader:
    targets = torch.arange(len(images)) % 10
    defaults = {"batch_size": 8, "mean": CIFAR_MEAN, "std": CIFAR_STD, "augment": True}
    defaults["drop_last"] = kwargs.get("augment", True)
    return DeviceLoader(images, targets, **{**defaults, **kwargs})


def test_crop_flip_equals_torchvision_on_the_same_offsets():
    gen = torch.Generator().manual_seed(0)
    # Not square, so swapped rows and columns would show; every offset and both flips.
    images = torch.randint(0, 256, (18, 3, 10, 14), dtype=torch.uint8, generator=gen)
    top = torch.tensor([0, 8, 3, 8, 0, 4, 1, 7, 2] * 2)
    left = torch.tensor([0, 8, 8, 0, 5, 4, 6, 1, 2] * 2)
    flip = torch.tensor([False] * 9 + [True] * 9)
    out = crop_flip(images, top, left, flip, padding=4)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for i in range(len(images)):
        expected = TF.crop(TF.pad(images[i], [4], fill=0), int(top[i]), int(left[i]), 10, 14)
        if flip[i]:
            expected = TF.horizontal_flip(expected)
        assert torch.equal(out[i], expected), i


def test_batches_equal_torchvisions_pipeline_with_the_loaders_draws():
    images = _images(40, seed=1)
    loader = _loader(images, seed=3)
    indices, draws = loader.epoch_plan()
    seen = 0
    for batch, (x, y) in enumerate(loader):
        assert x.dtype == torch.float32 and x.shape == (8, 3, 32, 32)
        for row in range(len(x)):
            position = batch * 8 + row
            top, left, flip = draws[position].tolist()
            index = int(indices[position])
            expected = _reference(images[index], top, left, bool(flip))
            torch.testing.assert_close(x[row], expected, rtol=0, atol=1e-5)
            assert int(y[row]) == index % 10
            seen += 1
    assert seen == 40


def test_draws_span_every_offset_and_flip_half_the_images():
    loader = _loader(_images(4000, size=4), seed=0)
    _indices, draws = loader.epoch_plan()
    assert set(draws[:, 0].tolist()) == set(range(9)) == set(draws[:, 1].tolist())
    assert 0.45 < draws[:, 2].float().mean().item() < 0.55
    assert sorted(_indices.tolist()) == list(range(4000))


def test_same_seed_same_batches_and_epochs_differ():
    images = _images(64, seed=2)

    def epoch(seed: int, number: int) -> list[torch.Tensor]:
        loader = _loader(images, seed=seed)
        loader.sampler.set_epoch(number)
        return [x for x, _ in loader]

    first = epoch(seed=5, number=0)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch(5, 0), strict=True))
    assert not torch.equal(first[0], epoch(5, 1)[0])
    assert not torch.equal(first[0], epoch(6, 0)[0])


def test_training_shards_like_distributed_sampler_and_evaluation_covers_all_once():
    images = _images(45)
    plans = [_loader(images, seed=1, rank=r, world_size=2).epoch_plan() for r in (0, 1)]
    shards = [set(indices.tolist()) for indices, _ in plans]
    assert len(shards[0]) == len(shards[1]) == 22 and not shards[0] & shards[1]
    # The same image gets the same draws whatever the number of ranks.
    single_indices, single_draws = _loader(images, seed=1).epoch_plan()
    per_image = {int(i): d.tolist() for i, d in zip(single_indices, single_draws, strict=True)}
    for indices, draws in plans:
        for i, d in zip(indices.tolist(), draws.tolist(), strict=True):
            assert per_image[i] == d
    evaluation = [
        _loader(images, augment=False, batch_size=7, rank=r, world_size=2) for r in (0, 1)
    ]
    labels = sorted(int(i) for loader in evaluation for _, y in loader for i in y)
    assert labels == sorted(int(i) % 10 for i in range(45))
    assert len(evaluation[0]) == 4  # 23 images in batches of 7, the partial one kept


def test_evaluation_batches_are_the_plain_normalized_images_in_order():
    images = _images(10)
    x, _ = next(iter(_loader(images, augment=False, batch_size=10)))
    expected = TF.normalize(TF.to_dtype(images, torch.float32, scale=True), CIFAR_MEAN, CIFAR_STD)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)


def test_build_loaders_gpu_kind_reads_cifar_with_label_noise(tiny_cifar10):
    pair = build_cifar(tiny_cifar10, label_noise=0.5)
    loaders = build_loaders(
        pair.train,
        pair.test,
        batch_size=16,
        eval_batch_size=32,
        num_workers=2,
        seed=0,
        kind="gpu",
        device=torch.device("cpu"),
    )
    assert len(loaders.train) == 40 // 16 and len(loaders.test) == 1
    indices, _ = loaders.train.epoch_plan()
    x, y = next(iter(loaders.train))
    assert x.shape == (16, 3, 32, 32) and y.dtype == torch.int64
    noisy = torch.tensor(pair.train.targets)
    assert torch.equal(y, noisy[indices[:16]])


def test_gpu_loader_needs_images_in_one_array():
    digits_like = TensorImageDataset(torch.rand(8, 1, 8, 8), torch.zeros(8).numpy())
    with pytest.raises(DatasetError, match=r"dataset\.loader=dataloader"):
        build_loaders(
            digits_like,
            digits_like,
            batch_size=4,
            eval_batch_size=4,
            num_workers=0,
            seed=0,
            kind="gpu",
        )


def test_loader_option_is_validated(compose_cfg):
    validate(compose_cfg(["dataset=cifar10", "dataset.loader=gpu"]))
    with pytest.raises(ConfigError, match=r"dataset\.loader=gpu"):
        validate(compose_cfg(["dataset=digits", "dataset.loader=gpu"]))
    with pytest.raises(ConfigError, match=r"dataset\.loader='workers'"):
        validate(compose_cfg(["dataset=cifar10", "dataset.loader=workers"]))


def test_training_with_dataset_loader_gpu_uses_the_device_loader(
    tmp_path, tiny_cifar10, compose_cfg, monkeypatch
):
    from sam_train.data import device_loader
    from sam_train.train import train

    built = []

    def spy(*args, **kwargs):
        built.append(kwargs["device"])
        return build_device_loaders(*args, **kwargs)

    build_device_loaders = device_loader.build_device_loaders
    monkeypatch.setattr(device_loader, "build_device_loaders", spy)
    cfg = compose_cfg(
        [
            "dataset=cifar10",
            f"dataset.root={tiny_cifar10}",
            "dataset.download=false",
            "dataset.verify_checksums=false",
            "dataset.loader=gpu",
            "model=digits_cnn",
            "trainer.epochs=1",
            "trainer.batch_size=8",
            "trainer.device=cpu",
            "logger=none",
            "checkpoint.save_last=false",
            "checkpoint.save_best=false",
        ]
    )
    (tmp_path / "run").mkdir()
    results = train(cfg, tmp_path / "run")
    assert built == [torch.device("cpu")]
    assert results["test_images"] == 20 and results["epochs_run"] == 1
