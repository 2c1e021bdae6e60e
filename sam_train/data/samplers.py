"""A sampler that shards an evaluation set across ranks without padding or duplicates."""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler


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
