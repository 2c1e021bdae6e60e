"""``python -m scripts.bench --sections fsdp``: per-rank memory and collectives of a SAM step under
DDP and under FSDP2, two processes (gloo on the CPU; what is held and sent does not depend
on the device).

Bytes are counted from each rank's local tensors (a DTensor's shard), so they hold on the
CPU: parameters, gradients (at the base optimizer's step, when the gradient SAM applies is
there), the base optimizer's state (momentum) and SAM's weight backup. Collectives are
counted by wrapping the ``torch.distributed`` functions FSDP2 calls (``all_gather_single``,
``reduce_scatter_single``, ...); DDP's buckets are all-reduced through its default comm hook
registered in Python, so each bucket's ``all_reduce`` is counted too. Every run is
built by ``sam_train.build.build_run`` from the config training composes.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sam_train.sam.sharded import local
from sam_train.strategy import DDPStrategy, DistInfo, FSDPStrategy, process_group

from .workloads import bench_run, compose

#: the functions counted; FSDP2 all-gathers and reduce-scatters through the first two
COLLECTIVES = (
    "all_gather_single",
    "reduce_scatter_single",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "all_reduce",
    "broadcast",
    "all_gather",
)

#: a small ViT for CIFAR-sized images (timm's ViT-Tiny, 4x4 patches): 12 blocks of width 192
VIT_OVERRIDES = [
    "model.name=vit_tiny_patch16_224",
    "+model.kwargs.img_size=32",
    "+model.kwargs.patch_size=4",
]


@contextlib.contextmanager
def counting_collectives() -> Iterator[Counter]:
    """Count calls and input bytes of the torch.distributed collectives while inside."""
    counts: Counter = Counter()
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counted(name: str, fn):
        def wrapper(*args, **kwargs):
            tensor = kwargs.get("input", args[1] if len(args) > 1 else args[0] if args else None)
            counts[name] += 1
            if isinstance(tensor, torch.Tensor):
                counts[f"{name} bytes"] += tensor.numel() * tensor.element_size()
            return fn(*args, **kwargs)

        return wrapper

    for name, fn in originals.items():
        setattr(dist, name, counted(name, fn))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)


def _bytes(tensors) -> int:
    return sum(local(t).numel() * local(t).element_size() for t in tensors)


def measure(run, images: torch.Tensor, targets: torch.Tensor, steps: int) -> dict[str, Any]:
    """One warm-up step, then ``steps`` counted ones; memory as the last step held it."""
    grads: dict[str, int] = {}
    base = run.step.base_optimizer
    hook = base.register_step_pre_hook(
        lambda *_: grads.update(
            bytes=_bytes(p.grad for p in run.model.parameters() if p.grad is not None)
        )
    )
    if isinstance(run.train_model, torch.nn.parallel.DistributedDataParallel):
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

        # DDP's default hook, in Python: each gradient bucket's dist.all_reduce is counted
        run.train_model.register_comm_hook(None, default_hooks.allreduce_hook)
    run.step(images, targets)
    with counting_collectives() as counts:
        for _ in range(steps):
            run.step(images, targets)
    hook.remove()
    optimizer = run.optimizer
    per_step = {k: v / steps for k, v in counts.items()}
    return {
        "param_bytes": _bytes(run.model.parameters()),
        "grad_bytes": grads["bytes"],
        "optimizer_state_bytes": _bytes(
            t
            for s in base.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor) and t.dim()
        ),
        "sam_backup_bytes": _bytes(optimizer._backup.values()),
        "collectives_per_step": per_step,
    }


def _worker(rank: int, world_size: int, init_file: str, payload: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    with process_group.exits_worker():
        info = DistInfo(rank=rank, local_rank=rank, world_size=world_size)
        device = torch.device("cpu")
        results = {}
        for name, overrides in payload["workloads"].items():
            for kind in ("ddp", "fsdp"):
                cfg = compose([*overrides, f"trainer.strategy={kind}"])
                strategy = (
                    FSDPStrategy(info, device, wrap_classes=None)
                    if kind == "fsdp"
                    else DDPStrategy(info, device)
                )
                run = bench_run(cfg, strategy)
                gen = torch.Generator().manual_seed(rank)
                images = torch.randn(payload["batch"], 3, 32, 32, generator=gen)
                targets = torch.randint(0, 10, (payload["batch"],), generator=gen)
                results[f"{name} {kind}"] = {
                    "workload": name,
                    "strategy": kind,
                    "units": len(strategy.units) if kind == "fsdp" else None,
                    **measure(run, images, targets, payload["steps"]),
                }
        if rank == 0:
            Path(out).write_text(json.dumps(results))


def bench_fsdp(opts) -> list[dict[str, Any]]:
    """WRN-16-4 and a small ViT, SAM over momentum SGD, 2 processes, DDP then FSDP."""
    world_size, batch = 2, 4
    common = ["trainer.device=cpu", f"trainer.batch_size={batch * world_size}"]
    cifar = [
        "dataset=cifar10",
        f"dataset.root={opts.cifar_root}",
        "dataset.download=false",
        "dataset.verify_checksums=false",
        "trainer.num_workers=0",
    ]
    payload = {
        "workloads": {
            "wrn16_4": [*common, *cifar, "model.name=wrn16_4"],
            "vit_tiny 32px/4": [*common, *cifar, *VIT_OVERRIDES],
        },
        "batch": batch,
        "steps": 2,
    }
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "fsdp.json")
        mp.spawn(
            _worker, args=(world_size, os.path.join(tmp, "init"), payload, out), nprocs=world_size
        )
        measured = json.loads(Path(out).read_text())
    return [{"world_size": world_size, **row} for row in measured.values()]


def markdown_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The README's table: MiB per rank, and collectives per SAM step."""
    lines = [
        "",
        "| 2 processes, SAM | strategy | params MiB/rank | grads MiB/rank | optimizer state "
        "MiB/rank | SAM backup MiB/rank | collectives per step (calls, MiB sent per rank) |",
        "|---|---|---|---|---|---|---|",
    ]
    mib = 2**20
    for row in rows:
        calls = row["collectives_per_step"]
        shown = ", ".join(
            f"{name} {count:g}"
            + (f" ({calls[name + ' bytes'] / mib:.2f})" if name + " bytes" in calls else "")
            for name, count in calls.items()
            if not name.endswith(" bytes")
        )
        strategy = row["strategy"] + (f" ({row['units']} units)" if row["units"] else "")
        lines.append(
            f"| {row['workload']} | {strategy} | {row['param_bytes'] / mib:.2f} | "
            f"{row['grad_bytes'] / mib:.2f} | {row['optimizer_state_bytes'] / mib:.2f} | "
            f"{row['sam_backup_bytes'] / mib:.2f} | {shown} |"
        )
    return lines
