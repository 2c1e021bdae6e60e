"""Run by tests/test_sam_variants.py as ``torchrun --nproc_per_node=2
tests/variants_ddp_worker.py``: SAM and every variant that skips or combines passes takes 4 DDP
steps, each replica on its own data, once trading the weights' storage with SAM's backup (the
default) and once copying them; rank 0 prints ``<name> True`` when the replicas' weights are
still identical and, on every replica, the two ways gave the same weights bit for bit.
"""

import torch
import torch.distributed as dist
from sam_reference import sam_step
from torch import nn

from sam_train.sam import VARIANTS
from sam_train.strategy import DDPStrategy, process_group

#: variant name -> its arguments, on plain SGD (no momentum unless given) with rho 0.1
CASES = {
    "sam": {},
    "gsam": {},
    "looksam": {"k": 2},
    "interval": {"k": 2},
    "msam": {"momentum": 0.9},
    "rst": {"seed": 5},
    "aesam": {"threshold_start": 0.0, "threshold_end": 0.0},
    "wsam": {},
    "esam": {},
    "ksam": {},
    "mesa": {"ema_decay": 0.5},
    "bsam": {"num_examples": 100, "seed": 1},
}


def trained(name: str, strategy: DDPStrategy, swap: bool) -> torch.Tensor:
    """The weights after 4 steps, flat."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    arguments = {"rho": 0.1, "momentum": 0.0, **CASES[name]}
    step = sam_step(strategy.wrap(model), VARIANTS[name], arguments, strategy=strategy)
    step.optimizer.swap_weights = swap
    gen = torch.Generator().manual_seed(100 + strategy.rank)  # each replica its own data
    for _ in range(4):
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        step(x, y)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def main() -> None:
    strategy = DDPStrategy(process_group.init_distributed("cpu"), torch.device("cpu"))
    with process_group.exits_worker():
        for name in CASES:
            flat = trained(name, strategy, swap=True)
            same = torch.tensor(float(torch.equal(flat, trained(name, strategy, swap=False))))
            dist.all_reduce(same, op=dist.ReduceOp.MIN)
            gathered = [torch.zeros_like(flat) for _ in range(2)]
            dist.all_gather(gathered, flat)
            if strategy.rank == 0:
                print(name, torch.equal(gathered[0], gathered[1]) and bool(same), flush=True)


if __name__ == "__main__":
    main()
