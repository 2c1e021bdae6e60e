"""Section 4: gradient all-reduces and bytes per step under DDP."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from sam_train.build import Run
from sam_train.config import register_configs
from sam_train.strategy import DDPStrategy, DistInfo, process_group

from .options import Options
from .timing import log
from .workloads import Workload, bench_run, compose, make_batch


@dataclass
class CommCounter:
    """What DDP sends: gradient buckets (seen by a comm hook) and buffer broadcasts."""

    allreduces: int = 0
    allreduce_bytes: int = 0
    buckets: set[int] = field(default_factory=set)
    broadcasts: int = 0
    broadcast_bytes: int = 0

    def reset(self) -> None:
        self.allreduces = self.allreduce_bytes = self.broadcasts = self.broadcast_bytes = 0
        self.buckets = set()


def _counting_allreduce_hook(counter: CommCounter, bucket):  # DDP rejects string annotations
    """DDP's default all-reduce, counted: one call per gradient bucket per synced backward."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    counter.allreduces += 1
    counter.allreduce_bytes += bucket.buffer().numel() * bucket.buffer().element_size()
    counter.buckets.add(bucket.index())
    return default_hooks.allreduce_hook(None, bucket)


def instrument_ddp(ddp: nn.parallel.DistributedDataParallel) -> CommCounter:
    """Count DDP's gradient all-reduces (comm hook) and buffer broadcasts (a wrapper)."""
    counter = CommCounter()
    ddp.register_comm_hook(counter, _counting_allreduce_hook)
    broadcast = ddp._distributed_broadcast_coalesced

    def counted(tensors, buffer_size, authoritative_rank=0):
        counter.broadcasts += 1
        counter.broadcast_bytes += sum(t.numel() * t.element_size() for t in tensors)
        return broadcast(tensors, buffer_size, authoritative_rank)

    ddp._distributed_broadcast_coalesced = counted
    return counter


DDP_MODES = {  # name: the overrides of the run
    "base optimizer": ["sam=none"],
    "sam default": [],
    "sam sync_perturbation": ["sam.sync_perturbation=true"],
}


def ddp_run(
    overrides: list[str], mode: str, device: torch.device, bucket_cap_mb: float | None = None
) -> Run:
    """On a rank of an initialised process group: the run training builds, DDPStrategy's wrap.

    ``bucket_cap_mb`` None keeps DDP's default buckets (about 1 MiB first, then 25 MiB).
    """
    rank, world_size = dist.get_rank(), dist.get_world_size()
    info = DistInfo(rank=rank, local_rank=rank, world_size=world_size)
    strategy = DDPStrategy(info, device, bucket_cap_mb=bucket_cap_mb)
    return bench_run(compose([*overrides, *DDP_MODES[mode]]), strategy)


def ddp_measure(
    work: Workload,
    overrides: list[str],
    device: torch.device,
    *,
    warmup: int,
    steps: int,
    bucket_cap_mb: float | None = None,
) -> dict[str, Any]:
    """On each rank of an initialised process group: communication per step in each mode.

    ``overrides`` train ``work`` at its per-process batch on this many processes.
    """
    rank = dist.get_rank()
    results = {}
    for mode in DDP_MODES:
        run = ddp_run(overrides, mode, device, bucket_cap_mb)
        counter = instrument_ddp(run.train_model)
        images, targets = make_batch(work, device, seed=rank)
        for _ in range(warmup):  # the first step also rebuilds DDP's buckets
            run.step(images, targets)
        counter.reset()
        dist.barrier()
        start = time.perf_counter()
        for _ in range(steps):
            run.step(images, targets)
        elapsed = (time.perf_counter() - start) / steps
        results[mode] = {
            "allreduces_per_step": counter.allreduces / steps,
            "allreduce_bytes_per_step": counter.allreduce_bytes / steps,
            "buckets": len(counter.buckets),
            "buffer_broadcasts_per_step": counter.broadcasts / steps,
            "buffer_broadcast_bytes_per_step": counter.broadcast_bytes / steps,
            "param_bytes": sum(p.numel() * p.element_size() for p in run.model.parameters()),
            "step_s": elapsed,
        }
    return results


def _ddp_worker(rank: int, world_size: int, init_file: str, payload: dict, out: str) -> None:
    torch.set_num_threads(payload["threads"])
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size
    )
    # DDP's gloo group can abort the interpreter's exit: see process_group.exit_worker.
    with process_group.exits_worker():
        register_configs()
        results = {}
        for fields in payload["workloads"]:
            work = Workload(**{**fields, "input_shape": tuple(fields["input_shape"])})
            results[work.name] = ddp_measure(
                work,
                payload["overrides"][work.name],
                torch.device("cpu"),
                warmup=payload["warmup"],
                steps=payload["steps"],
            )
        if rank == 0:
            Path(out).write_text(json.dumps(results))


def bench_ddp(opts: Options) -> list[dict[str, Any]]:
    """Two processes, gloo on the CPU: what is communicated does not depend on the device."""
    world_size = 2
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ddp.json")
        payload = {
            "workloads": [asdict(opts.work[key]) for key in opts.selected],
            "overrides": {
                key: [*opts.run_overrides(opts.work[key], world_size), "trainer.device=cpu"]
                for key in opts.selected
            },
            "warmup": 1,
            "steps": opts.ddp_steps,
            "threads": max(1, torch.get_num_threads() // world_size),
        }
        mp.spawn(
            _ddp_worker,
            args=(world_size, os.path.join(tmp, "init"), payload, out),
            nprocs=world_size,
        )
        measured = json.loads(Path(out).read_text())
    results = []
    for key in opts.selected:
        work, modes = opts.work[key], measured[key]
        results.append({"workload": work.label, "key": key, "world_size": world_size, **modes})
        default = modes["sam default"]
        log(
            f"ddp {work.label}: SAM default {default['allreduces_per_step']:g} bucket "
            f"all-reduce(s) per step, {default['buckets']} bucket(s), "
            f"{default['buffer_broadcasts_per_step']:g} buffer broadcast(s)"
        )
    return results
