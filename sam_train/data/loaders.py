"""DataLoaders: an epoch-seeded resumable training order, exact sharded evaluation."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, SequentialSampler, default_collate

from sam_train.data.samplers import EpochSeededDataset, ResumableSampler, ShardSampler
from sam_train.errors import SamTrainError

if TYPE_CHECKING:
    from sam_train.data.device_loader import DeviceLoader, DeviceSampler


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, as torch's warning counts)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


@dataclass
class Loaders:
    train: DataLoader | DeviceLoader
    test: DataLoader | DeviceLoader

    @property
    def train_sampler(self) -> ResumableSampler | DeviceSampler:
        """The sampler whose ``set_epoch(epoch, skip)`` positions the training order."""
        return self.train.sampler  # type: ignore[return-value]


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
    host_rngs: bool = False,
    with_indices: bool = False,
) -> Loaders:
    """Loaders for one process; ``batch_size`` is per process.

    ``kind="gpu"`` keeps the whole (CIFAR) data set on ``device`` and augments there
    (``device_loader``); ``num_workers`` and ``pin_memory`` then do not apply.

    Training drops the last partial batch so every step has the same size (and SAM's
    perturbation the same statistics); its order and augmentation depend only on the seed and
    the epoch (see ``samplers``), so a resumed run sees the same batches; ``host_rngs`` seeds
    Python's and NumPy's generators per sample too, for timm's transforms. Evaluation shards the
    test set without padding, so gathered counts cover each example exactly once.
    ``num_workers`` is capped at the cores this process may run on (more only contend).
    ``with_indices``: training batches are (images, targets, example indices), for SAF.
    """
    num_workers = min(num_workers, usable_cores())
    if kind == "gpu":
        if with_indices:
            raise ValueError("the device-resident loader does not hand out example indices")
        return _device_loaders(
            train_set, test_set, batch_size, eval_batch_size, device, seed, rank, world_size
        )
    if kind != "dataloader":
        raise ValueError(f"loader kind must be 'dataloader' or 'gpu', got {kind!r}")
    options: dict[str, Any] = {
        "num_workers": num_workers,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if num_workers > 0:
        options["prefetch_factor"] = 4
    train_sampler = ResumableSampler(len(train_set), seed=seed, rank=rank, world_size=world_size)
    train = EpochSeededDataset(train_set, seed, host_rngs, with_indices)
    test_sampler = (
        ShardSampler(len(test_set), rank=rank, world_size=world_size)
        if world_size > 1
        else SequentialSampler(test_set)
    )
    return Loaders(
        train=_loader(train, batch_size, train_sampler, seed, options, drop_last=True),
        test=_loader(test_set, eval_batch_size, test_sampler, seed, options),
    )


def _device_loaders(
    train_set: Dataset,
    test_set: Dataset,
    batch_size: int,
    eval_batch_size: int,
    device: torch.device | None,
    seed: int,
    rank: int,
    world_size: int,
) -> Loaders:
    """``kind="gpu"``: the data set kept on ``device`` (``device_loader``)."""
    from sam_train.data.device_loader import build_device_loaders

    train, test = build_device_loaders(
        train_set,
        test_set,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        device=device if device is not None else torch.device("cpu"),
        seed=seed,
        rank=rank,
        world_size=world_size,
    )
    return Loaders(train, test)


def _loader(
    dataset: Dataset,
    batch_size: int,
    sampler: Any,
    seed: int,
    options: dict[str, Any],
    drop_last: bool = False,
) -> CheckedDataLoader:
    """A loader whose bad samples raise their one-line error, with a generator of its own."""
    return CheckedDataLoader(
        _ErrorsAsValues(dataset),
        batch_size,
        sampler=sampler,
        drop_last=drop_last,
        generator=_own_generator(seed),
        collate_fn=_collate,
        **options,
    )


def _own_generator(seed: int) -> torch.Generator:
    """A loader's iterator draws its workers' base seed from this generator; without one it
    would draw from the global stream that dropout uses, and a resumed run would drift."""
    return torch.Generator().manual_seed(seed)


class _Failed:
    """A sample that raised a ``SamTrainError``, carried to the main process as a value."""

    def __init__(self, error: SamTrainError) -> None:
        self.error = error


class _ErrorsAsValues(Dataset):
    """Returns a user error as a ``_Failed`` sample instead of raising it.

    A worker process that raises has its exception re-created in the main process with the
    worker's whole traceback as the message; returned as a value, the error arrives intact.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.dataset[key]
        except SamTrainError as err:
            return _Failed(err)


def _collate(samples: list[Any]) -> Any:
    """``default_collate``, or the batch's first ``_Failed`` sample in place of the batch."""
    failed = next((sample for sample in samples if isinstance(sample, _Failed)), None)
    return failed if failed is not None else default_collate(samples)


class CheckedDataLoader(DataLoader):
    """A DataLoader that raises, in the caller's process, the one-line error a sample met
    (``DatasetError("cannot read image <path>: ...")``), with or without worker processes."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        for batch in batches:
            if isinstance(batch, _Failed):
                self._stop_workers(batches)
                raise batch.error
            yield batch

    def _stop_workers(self, batches: Iterator[Any]) -> None:
        """End the worker processes now: left to the garbage collector, their shutdown waits
        out torch's join timeouts (about 20 s here) before the error reaches the user."""
        shutdown = getattr(batches, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
            self._iterator = None  # a persistent iterator must not be reused once shut down
