"""torchrun worker for the restart test: attempt 0 fails after joining, attempt 1 must join.

On the restart, rank 0 waits before joining, so rank 1 reads the store first: with keys left
over from attempt 0, rank 1 would dial attempt 0's dead rank 0 and fail.
"""

import os
import sys
import time

import torch
import torch.distributed as dist

from sam_train.strategy import DDPStrategy, process_group


def main() -> None:
    attempt = int(os.environ["TORCHELASTIC_RESTART_COUNT"])
    if attempt == 1 and os.environ["RANK"] == "0":
        time.sleep(3)
    strategy = DDPStrategy(process_group.init_distributed("cpu"), torch.device("cpu"))
    total = strategy.all_reduce_sum(torch.ones(1))
    assert total.item() == strategy.world_size
    if attempt == 0:
        strategy.barrier()
        process_group.cleanup()
        sys.exit(1)  # every rank fails: torchrun restarts the group
    assert dist.is_initialized()
    print(f"RESTARTED rank {strategy.rank} attempt {attempt}", flush=True)
    process_group.cleanup()


if __name__ == "__main__":
    main()
