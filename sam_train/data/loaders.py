"""DataLoaders: seeded shuffling, DistributedSampler under DDP, workers that do not starve.

``kind="gpu"`` builds the device-resident CIFAR loaders of ``device_loader`` instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
)

from sam_train.data.samplers import ShardSampler

if TYPE_CHECKING:
    from sam_train.data.device_loader import DeviceLoader


@dataclass
class Loaders:
    train: DataLoader | DeviceLoader
    test: DataLoader | DeviceLoader


def build_loaders(
    train_set: Dataset,
    test_set: Dataset,
    *,
    batch_size: int,
    eval_batch_size: int,
    num_workers: int,
    seed: int,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    kind: str = "dataloader",
    device: torch.device | None = None,
) -> Loaders:
    """Loaders for one process; ``batch_size`` is per process.

    ``kind="gpu"`` keeps the whole (CIFAR) data set on ``device`` and augments there;
    ``num_workers`` and ``pin_memory`` then do not apply.

    Training drops the last partial batch so every step has the same size (and SAM's
    perturbation the same statistics). Evaluation shards the test set without padding, so
    gathered counts cover each example exactly once.
    """
    if kind == "gpu":
        from sam_train.data.device_loader import build_device_loaders

        return build_device_loaders(
            train_set,
            test_set,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            device=device if device is not None else torch.device("cpu"),
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
    if kind != "dataloader":
        raise ValueError(f"loader kind must be 'dataloader' or 'gpu', got {kind!r}")
    generator = torch.Generator().manual_seed(seed)
    if world_size > 1:
        train_sampler = DistributedSampler(
            train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        test_sampler = ShardSampler(len(test_set), rank=rank, world_size=world_size)
    else:
        train_sampler = RandomSampler(train_set, generator=generator)
        test_sampler = SequentialSampler(test_set)
    common = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if num_workers > 0:
        common["prefetch_factor"] = 4
    return Loaders(
        train=DataLoader(train_set, batch_size, sampler=train_sampler, drop_last=True, **common),
        test=DataLoader(test_set, eval_batch_size, sampler=test_sampler, **common),
    )
