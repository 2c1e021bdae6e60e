"""A CIFAR loader whose whole data set lives on the training device (``dataset.loader=gpu``).

A few CPU worker processes decoding, cropping and flipping one image at a time cannot feed
WRN-28-10 on a modern GPU. CIFAR fits in device memory (50 000 x 3 x 32 x 32 uint8 = 154 MB),
so this loader keeps it there and augments whole batches with a handful of tensor ops: no
worker processes, no host-to-device copies, no host synchronisation. Shuffling and the random
crop offsets are drawn on the device from a generator seeded by ``seed + epoch``, so a run is
reproducible on a given device type. The same code runs on the CPU (that is how it is tested).

The augmentation is the standard CIFAR one of ``transforms.cifar_transforms(train=True)``:
zero-pad by 4, random 32x32 crop, horizontal flip with probability 1/2, then scale to [0, 1]
and normalize.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from sam_train.data.constants import CIFAR_MEAN, CIFAR_STD
from sam_train.errors import DatasetError


def crop_flip(
    images: torch.Tensor,
    top: torch.Tensor,
    left: torch.Tensor,
    flip: torch.Tensor,
    padding: int,
) -> torch.Tensor:
    """Crop each zero-padded image at (top, left) to its own size, mirrored where ``flip``.

    Per image, the same as torchvision's ``pad(fill=0)``, ``crop(top, left, H, W)`` and then
    ``horizontal_flip`` when ``flip`` is set; here one gather does the whole batch.

    Args:
        images: B x C x H x W, any dtype.
        top, left: B integer offsets in [0, 2 * padding].
        flip: B booleans.
        padding: pixels of zeros added on every side before cropping.
    """
    batch, channels, height, width = images.shape
    device = images.device
    padded = F.pad(images, (padding, padding, padding, padding))
    rows = top[:, None] + torch.arange(height, device=device)
    columns = torch.arange(width, device=device)
    columns = left[:, None] + torch.where(flip[:, None], width - 1 - columns, columns)
    return padded[
        torch.arange(batch, device=device)[:, None, None, None],
        torch.arange(channels, device=device)[None, :, None, None],
        rows[:, None, :, None],
        columns[:, None, None, :],
    ]


class DeviceSampler:
    """The indices of one epoch as a device tensor, sharded over ranks.

    Training (``shuffle=True``) follows ``DistributedSampler(drop_last=True)``: one
    permutation shared by all ranks (same seed and epoch), the tail that does not divide
    evenly dropped, rank r taking positions r, r + W, ... . Evaluation takes r, r + W, ... of
    the data set in order, every example exactly once over all ranks (like ``ShardSampler``).
    """

    def __init__(
        self,
        length: int,
        *,
        shuffle: bool,
        device: torch.device,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.length, self.shuffle, self.device = length, shuffle, device
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.skip = 0  # indices of this epoch already consumed (set on resume)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch's permutation (call before each epoch, like DistributedSampler);
        ``skip`` indices (whole batches) are left out once, for resuming mid-epoch."""
        self.epoch, self.skip = epoch, skip

    def generator(self) -> torch.Generator:
        """A device generator for this epoch: the permutation, then the augmentation draws."""
        return torch.Generator(self.device).manual_seed(self.seed + self.epoch)

    def indices(self, generator: torch.Generator) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.rank, self.length, self.world_size, device=self.device)
        order = torch.randperm(self.length, generator=generator, device=self.device)
        usable = self.length - self.length % self.world_size
        return order[self.rank : usable : self.world_size]

    def __len__(self) -> int:
        if self.shuffle:
            return self.length // self.world_size
        return len(range(self.rank, self.length, self.world_size))


class DeviceLoader:
    """Batches of normalized images and labels from uint8 images kept on the device.

    Args:
        images: N x C x H x W uint8, already on the device.
        targets: N int64 labels, on the same device.
        batch_size: images per batch (per process under DDP).
        mean, std: per-channel normalization, on the [0, 1] scale.
        augment: random crop with ``padding`` and horizontal flip (training); off for
            evaluation.
        drop_last: drop the final partial batch (training: every step the same size).
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: bool,
        padding: int = 4,
        drop_last: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"images must be N x C x H x W uint8, got {images.dtype} {images.shape}"
            )
        if len(targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images, self.targets = images, targets
        self.batch_size, self.augment, self.padding = batch_size, augment, padding
        self.drop_last = drop_last
        self.sampler = DeviceSampler(
            len(images),
            shuffle=augment,
            device=images.device,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
        # (x / 255 - mean) / std = x * scale + offset: one fused multiply-add per batch.
        std_t = torch.tensor(std, dtype=torch.float32, device=images.device)[:, None, None]
        mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device)[:, None, None]
        self._scale = 1.0 / (255.0 * std_t)
        self._offset = -mean_t / std_t

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else -(-count // self.batch_size)

    def epoch_plan(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """This epoch's image indices and, when augmenting, each image's (top, left, flip).

        The draws are made per image of the whole data set (then indexed), so the
        augmentation an image gets in an epoch does not depend on the number of ranks.
        """
        generator = self.sampler.generator()
        indices = self.sampler.indices(generator)
        if not self.augment:
            return indices, None
        size, span, device = (self.sampler.length,), 2 * self.padding + 1, self.images.device
        draws = torch.stack(
            [
                torch.randint(0, span, size, generator=generator, device=device),
                torch.randint(0, span, size, generator=generator, device=device),
                torch.randint(0, 2, size, generator=generator, device=device),
            ],
            dim=1,
        )
        return indices, draws[indices]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices, draws = self.epoch_plan()
        stop = len(self) * self.batch_size if self.drop_last else len(indices)
        first, self.sampler.skip = self.sampler.skip, 0
        for start in range(first, stop, self.batch_size):
            batch = indices[start : start + self.batch_size]
            images = self.images[batch]
            if draws is not None:
                top, left, flip = draws[start : start + self.batch_size].unbind(1)
                images = crop_flip(images, top, left, flip.bool(), self.padding)
            yield torch.addcmul(self._offset, images.float(), self._scale), self.targets[batch]


def _as_device_tensors(dataset: object, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's CIFAR keeps ``data`` as N x H x W x C uint8 and ``targets`` as a list."""
    data, targets = getattr(dataset, "data", None), getattr(dataset, "targets", None)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 4:
        raise DatasetError(
            f"dataset.loader=gpu needs images held as one uint8 array (CIFAR); "
            f"{type(dataset).__name__} has none: use dataset.loader=dataloader"
        )
    images = torch.from_numpy(data).permute(0, 3, 1, 2).contiguous().to(device)
    return images, torch.as_tensor(np.asarray(targets), dtype=torch.int64).to(device)


def build_device_loaders(
    train_set: object,
    test_set: object,
    *,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> tuple[DeviceLoader, DeviceLoader]:
    """Train and test loaders over CIFAR data sets copied once to ``device``.

    The training labels are read after label noise was applied, so noisy runs stay noisy.
    """
    train_images, train_targets = _as_device_tensors(train_set, device)
    test_images, test_targets = _as_device_tensors(test_set, device)
    common = {"mean": CIFAR_MEAN, "std": CIFAR_STD, "seed": seed, "rank": rank}
    return (
        DeviceLoader(
            train_images,
            train_targets,
            batch_size=batch_size,
            augment=True,
            drop_last=True,
            world_size=world_size,
            **common,
        ),
        DeviceLoader(
            test_images,
            test_targets,
            batch_size=eval_batch_size,
            augment=False,
            drop_last=False,
            world_size=world_size,
            **common,
        ),
    )
