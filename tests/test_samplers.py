"""EpochSeededDataset: the same augmentation for (epoch, index) as ever, at a loader's speed.

Seeding with ``torch.manual_seed`` per example also seeded every accelerator backend and
recorded stack traces (11.5x slower loading); these tests fail if that comes back, by
counting the calls rather than timing them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sam_train.data.samplers import EpochSeededDataset, ResumableSampler


class _Augmented(Dataset):
    """Draws from torch's global generator, as torchvision's random transforms do."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(4) + index + torch.randint(0, 100, (1,))


def _old_item(dataset: Dataset, seed: int, epoch: int, index: int) -> torch.Tensor:
    """The behaviour before the fix: fork the global generator and torch.manual_seed it."""
    example_seed = int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(example_seed)
        return dataset[index]


def test_batches_are_bit_identical_to_the_manual_seed_behaviour():
    data = _Augmented()
    seeded = EpochSeededDataset(data, seed=3)
    for epoch in (0, 1, 7):
        for index in range(len(data)):
            assert torch.equal(seeded[(epoch, index)], _old_item(data, 3, epoch, index))
    assert not torch.equal(seeded[(0, 0)], seeded[(1, 0)]), "each epoch draws anew"


def test_the_global_generator_is_forked_not_reseeded():
    seeded = EpochSeededDataset(_Augmented(), seed=0)
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    seeded[(0, 5)]
    assert torch.equal(torch.rand(3), expected)


def test_loading_does_not_reseed_every_backend_per_example(monkeypatch):
    calls: list[str] = []
    for module in (torch, torch.random, torch.cuda):
        for name in ("manual_seed", "manual_seed_all"):
            if hasattr(module, name):
                original = getattr(module, name)

                def counting(seed, _name=name, _original=original):
                    calls.append(_name)
                    return _original(seed)

                monkeypatch.setattr(module, name, counting)
    sampler = ResumableSampler(16, seed=0)
    loader = DataLoader(EpochSeededDataset(_Augmented(), seed=0), batch_size=4, sampler=sampler)
    assert sum(len(batch) for batch in loader) == 16
    assert calls == []


def test_workers_never_exceed_the_usable_cores(recwarn):
    from sam_train.data.loaders import build_loaders, usable_cores

    data = _Augmented()
    loaders = build_loaders(
        data, data, batch_size=4, eval_batch_size=4, num_workers=usable_cores() + 3, seed=0
    )
    assert loaders.train.num_workers == loaders.test.num_workers == usable_cores()
    assert not [w for w in recwarn if "worker" in str(w.message)]
