"""Samplers whose order is a pure function of (seed, epoch), so a run can resume mid-epoch.

``ResumableSampler`` replaces torch's RandomSampler / DistributedSampler for training: the
permutation of epoch ``e`` is ``randperm(n, seed + e)`` (as DistributedSampler draws it), each
rank takes every ``world_size``-th index, and ``skip`` drops the batches a checkpoint already
covered. It yields ``(epoch, index)`` pairs; ``EpochSeededDataset`` seeds each sample's random
augmentation from them, so the images a step sees do not depend on how many workers there are
or where the run was interrupted. ``ShardSampler`` shards evaluation without padding.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


class ResumableSampler(Sampler[tuple[int, int]]):
    """Epoch-seeded shuffled shard of ``range(length)`` for one rank, resumable at a batch."""

    def __init__(
        self, length: int, *, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        if length < world_size:
            raise ValueError(f"{length} examples cannot be shared by {world_size} ranks")
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0  # indices of this epoch already consumed (set on resume)
        self.per_rank = length // world_size  # drop the tail so every rank gets as many

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Choose the epoch; ``skip`` indices (whole batches) are left out once, for resuming."""
        self.epoch, self.skip = epoch, skip

    def _indices(self) -> list[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
        else:
            order = list(range(self.length))
        return order[: self.per_rank * self.world_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = self._indices()[self.skip :]
        self.skip = 0
        return ((self.epoch, index) for index in indices)

    def __len__(self) -> int:
        return self.per_rank - self.skip


class EpochSeededDataset(Dataset):
    """Wraps a data set so sample ``i`` of epoch ``e`` is augmented with its own seed.

    The global CPU generator is forked, not reseeded, so in a single-process loader the
    model's random draws (dropout) are not disturbed. Only the CPU generator is seeded (what
    transforms draw from): ``torch.manual_seed`` would also seed every accelerator backend and
    record a Python stack trace for each uninitialised one, 11.5x slower loading on digits.
    ``host_rngs``: Python's and NumPy's generators are forked and seeded too, for transforms
    that draw from them (timm's RandAugment, AugMix, random erasing); off by default, as
    saving NumPy's state costs about 0.1 ms a sample.
    ``with_indices``: each sample ends with its index in the data set (SAF keeps outputs per
    training example).
    """

    def __init__(
        self, dataset: Dataset, seed: int, host_rngs: bool = False, with_indices: bool = False
    ) -> None:
        self.dataset, self.seed, self.host_rngs = dataset, seed, host_rngs
        self.with_indices = with_indices

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        with _forked_torch_rng(seed), _forked_host_rngs(seed, self.host_rngs):
            sample = self.dataset[index]
        return (*sample, index) if self.with_indices else sample


@contextlib.contextmanager
def _forked_torch_rng(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with ``seed`` inside, as before after."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


@contextlib.contextmanager
def _forked_host_rngs(seed: int, enabled: bool) -> Iterator[None]:
    """Python's and NumPy's global generators seeded with ``seed`` inside, as before after."""
    if not enabled:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class ShardSampler(Sampler[int]):
    """Rank r reads indices r, r + W, r + 2W, ...: every example exactly once over all ranks.

    torch's DistributedSampler pads the last shard by repeating examples, which would count
    them twice in a gathered accuracy.
    """

    def __init__(self, length: int, rank: int, world_size: int) -> None:
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))
