"""sam-train benchmarks: what SAM costs beyond its two passes, and what the trainer costs.

Measured side by side in one run (ratios, since a shared machine drifts), each comparison
interleaved (A, B, A, B, ... with the order rotated every repetition) after a warm-up, and
reported as medians over repetitions:

1. ``ratio``    SAM step time / base-optimizer step time, same model and batch (floor ~2.0);
2. ``trainer``  a minimal two-pass SAM loop written here / sam-train's training step
                (``SAMStep`` and the schedule's update; 1.0 means the trainer adds nothing);
3. ``memory``   bytes the SAM optimizer holds beyond the base optimizer's state, against the
                parameter bytes (found by walking the optimizer's references; on CUDA also the
                allocator's count);
4. ``ddp``      gradient all-reduces (DDP comm-hook calls, i.e. buckets) and bytes per step
                under two-process DDP (gloo on CPU), default vs ``sam.sync_perturbation=true``;
5. ``data``     data-loading throughput alone (images/s, the configured workers) against
                training throughput, per data set (digits; CIFAR-10 from synthetic images
                written in torchvision's on-disk format), and the device-resident loader;
6. ``fsdp``     per-rank bytes of parameters, gradients, optimizer state and SAM's backup,
                and the collectives per step, under DDP and under FSDP2 (two processes,
                gloo), for WRN-16-4 and a small ViT (``scripts/bench_sharding.py``);
7. ``compile``  ``trainer.compile=true`` (torch.compile) against eager.

Every data set, model, optimizer, schedule, DDP wrap and step timed here is built by
``sam_train.build`` (``build_run``) from the config ``sam-train`` composes for the same
overrides, so a benchmark measures what training runs.

Usage::

    python scripts/bench.py --quick        # `make bench`: minutes on 2 CPU cores, 1 thread
    python scripts/bench.py                # all threads, more repetitions, compile everything
    python scripts/bench.py --sections ratio,memory --workloads wrn16_4
    python scripts/bench.py --batch-size 128 --amp bf16   # on a GPU machine (auto-detected)

Writes ``bench.json`` and ``bench.md`` into ``--out`` (default ``outputs/bench``). The machine
may be shared: the load average before and after is recorded next to the numbers, and each
ratio is also given from CPU time, which other processes do not inflate.
"""

from __future__ import annotations

import argparse
import copy
import functools
import gc
import json
import math
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from omegaconf import DictConfig
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))  # bench_sharding, when imported as a file

import bench_sharding  # noqa: E402  (scripts/, beside this file)

from sam_train import build  # noqa: E402
from sam_train.build import Run  # noqa: E402
from sam_train.config import register_configs  # noqa: E402
from sam_train.paths import exit_on_problems, expect_folder  # noqa: E402
from sam_train.sam import SAM  # noqa: E402
from sam_train.strategy import DDPStrategy, DistInfo, Strategy, process_group  # noqa: E402

Batch = tuple[torch.Tensor, torch.Tensor]

# Every CIFAR run keeps the configured loader workers, as training does, on however many cores
# there are; torch's advice to use fewer would repeat for each run built.
warnings.filterwarnings("ignore", message="This DataLoader will create", category=UserWarning)

SECTIONS = ("ratio", "trainer", "memory", "ddp", "fsdp", "data", "compile")
TARGETS = {
    "sam_over_base": 2.05,  # at most
    "trainer_efficiency": 0.95,  # at least
    "sam_extra_memory_over_params": 1.0,  # at most
    "ddp_gradient_reductions_per_step": 1,  # exactly, default mode
    "loader_over_training": 3.0,  # at least, CIFAR with the default workers
}


# --------------------------------------------------------------------------------------
# Workloads, and the runs sam-train builds for them (sam_train.build, as training does)
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A model on a data set at a batch: what every section measures."""

    name: str
    model: str
    input_shape: tuple[int, int, int]  # the data set's images (make_batch's random batches)
    batch_size: int  # per process
    dataset: str
    num_classes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)  # model.kwargs

    @property
    def label(self) -> str:
        c, h, w = self.input_shape
        return f"{self.model} {c}x{h}x{w} b{self.batch_size}"


def workloads(batch_size: int) -> dict[str, Workload]:
    """The quickstart CNN and WRN-16-4 at CIFAR size; the CNN also at its own 8x8 input."""
    return {
        "cnn_cifar": Workload("cnn_cifar", "digits_cnn", (3, 32, 32), batch_size, "cifar10"),
        "wrn16_4": Workload("wrn16_4", "wrn16_4", (3, 32, 32), batch_size, "cifar10"),
        "cnn_digits": Workload("cnn_digits", "digits_cnn", (1, 8, 8), 64, "digits"),
        # For tests of this script: a few thousand parameters, milliseconds per step.
        "tiny": Workload("tiny", "digits_cnn", (1, 8, 8), 8, "digits", kwargs={"width": 4}),
    }


def compose(overrides: list[str]) -> DictConfig:
    """The config ``sam-train`` would run with these overrides (Hydra's compose API)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from sam_train.cli import config_dir

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)


def run_overrides(
    work: Workload, base: list[str], cifar_root: str | None = None, world_size: int = 1
) -> list[str]:
    """The command line that trains ``work``: its data set, model and (global) batch.

    CIFAR is read from ``cifar_root`` (synthetic images in the real format, no download).
    """
    overrides = [
        *base,
        f"dataset={work.dataset}",
        f"model.name={work.model}",
        f"trainer.batch_size={work.batch_size * world_size}",
        *(f"+model.kwargs.{key}={value}" for key, value in work.kwargs.items()),
    ]
    if work.dataset.startswith("cifar"):
        if cifar_root is None:
            raise ValueError(f"workload {work.name} needs a CIFAR root")
        overrides += [
            f"dataset.root={cifar_root}",
            "dataset.download=false",
            "dataset.verify_checksums=false",
        ]
    return overrides


def bench_run(cfg: DictConfig, strategy: Strategy | None = None) -> Run:
    """``build.build_run``: the data, model, optimizer, schedule, wrap and step of training.

    Seeded first, so every mode of a comparison starts from the same weights.
    """
    torch.manual_seed(0)
    run = build.build_run(cfg, strategy or build.run_strategy(cfg))
    run.train_model.train()
    return run


def make_batch(work: Workload, device: torch.device, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(work.batch_size, *work.input_shape, generator=gen)
    targets = torch.randint(0, work.num_classes, (work.batch_size,), generator=gen)
    return images.to(device), targets.to(device)


def train_step(run: Run, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """One training step as ``Trainer`` takes it: ``run.step``, then the schedule's update."""
    updates = 0

    def step() -> None:
        nonlocal updates
        run.step(images, targets)
        updates += 1
        run.scheduler.step_update(num_updates=updates)

    return step


class MinimalSAMLoop:
    """SAM's two passes written out as a user would, with nothing around them.

    The same base optimizer (timm's, built from the same config) and schedule; the
    perturbation with multi-tensor ops; BatchNorm statistics kept to the first pass by
    zeroing the momentum (the common hand-written trick); w restored by subtracting e(w).
    """

    def __init__(
        self, model: nn.Module, cfg: DictConfig, device: torch.device, steps_per_epoch: int
    ) -> None:
        self.model = model
        no_sam = compose(["sam=none"]).sam
        self.optimizer = build.build_optimizer(model, cfg.optimizer, no_sam)
        self.scheduler = build.build_scheduler(
            self.optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        self.rho = cfg.sam.rho
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(self.model(images), targets)
        loss.backward()
        self.loss_sum += loss.detach()
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            e_w = torch._foreach_mul(grads, self.rho / (norm + 1e-12))
            torch._foreach_add_(self.params, e_w)
        self.optimizer.zero_grad(set_to_none=True)
        momenta = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0
        nn.functional.cross_entropy(self.model(images), targets).backward()
        for m, momentum in zip(self.norms, momenta, strict=True):
            m.momentum = momentum
        with torch.no_grad():
            torch._foreach_sub_(self.params, e_w)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self.scheduler.step_update(num_updates=self.steps)


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timings:
    """Seconds per call, one entry per repetition: wall clock, and this process's CPU time.

    CPU time is what the step itself consumed, so it barely moves when other processes take
    the cores (it excludes DataLoader worker processes; on a GPU it is launch overhead only).
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]
    device: torch.device

    def __getitem__(self, name: str) -> list[float]:
        return self.wall[name]


def time_interleaved(
    configs: dict[str, Callable[[], Any]],
    *,
    device: torch.device,
    warmup: int,
    reps: int,
    min_rep_s: float = 0.0,
) -> Timings:
    """Time every config ``reps`` times, interleaved.

    After ``warmup`` calls of each config, every repetition runs the same number of calls of
    every config (enough for the slowest to last ``min_rep_s``), in an order rotated by one
    each time, so a slow phase of a shared machine hits all configs alike.
    """
    names = list(configs)
    slowest = 0.0
    for name in names:
        for _ in range(warmup):
            synchronize(device)
            start = time.perf_counter()
            configs[name]()
            synchronize(device)
            slowest = max(slowest, time.perf_counter() - start)
    calls = max(1, math.ceil(min_rep_s / slowest)) if slowest > 0 else 1
    timings = Timings({name: [] for name in names}, {name: [] for name in names}, device)
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            synchronize(device)
            start, start_cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                configs[name]()
            synchronize(device)
            timings.wall[name].append((time.perf_counter() - start) / calls)
            timings.cpu[name].append((time.process_time() - start_cpu) / calls)
    return timings


def median_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median of the per-repetition ratios (pairs measured back to back)."""
    return statistics.median(a / b for a, b in zip(numerator, denominator, strict=True))


def summary(times: list[float], cpu: list[float] | None = None) -> dict[str, Any]:
    """Median, extremes and the raw repetitions (seconds per call)."""
    stats: dict[str, Any] = {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "reps": len(times),
        "wall_s": times,
    }
    if cpu is not None:
        stats["cpu_median_s"] = statistics.median(cpu)
        stats["cpu_s"] = cpu
    return stats


def cpu_ratio(timings: Timings, numerator: str, denominator: str) -> float | None:
    """Median over repetitions of the back-to-back CPU-time ratio, when CPU time is the work.

    With one CPU thread, a step's CPU time is its work whether or not other processes held
    the core meanwhile; pairing the repetitions also cancels slower drifts (a busy sibling
    hyper-thread, cache pressure). None on a GPU (CPU time is only the launch overhead) and
    with several threads (CPU time then counts spin-waits).
    """
    if timings.device.type != "cpu" or torch.get_num_threads() > 1:
        return None
    return median_ratio(timings.cpu[numerator], timings.cpu[denominator])


def head_to_head(
    opts: Options, steps: dict[str, Callable[[], Any]], numerator: str, denominator: str, ratio: str
) -> dict[str, Any]:
    """Time ``steps`` interleaved; each one's summary, and ``numerator / denominator`` three ways:
    ``ratio`` (of the medians), ``ratio_paired`` (back to back) and ``ratio_cpu`` (CPU time)."""
    times = time_interleaved(
        steps, device=opts.device, warmup=opts.warmup, reps=opts.reps, min_rep_s=opts.min_rep_s
    )
    row: dict[str, Any] = {name: summary(times[name], times.cpu[name]) for name in steps}
    row[ratio] = row[numerator]["median_s"] / row[denominator]["median_s"]
    row[f"{ratio}_paired"] = median_ratio(times[numerator], times[denominator])
    row[f"{ratio}_cpu"] = cpu_ratio(times, numerator, denominator)
    return row


@dataclass
class Options:
    device: torch.device
    warmup: int
    reps: int
    min_rep_s: float
    precision: str
    work: dict[str, Workload]
    selected: list[str]
    data_images: int
    ddp_steps: int
    compile_workloads: list[str]
    overrides: list[str]  # of every run (the device)
    cifar_root: str | None = None  # synthetic CIFAR-10, when a workload reads it

    def run_overrides(self, work: Workload, world_size: int = 1) -> list[str]:
        return run_overrides(work, self.overrides, self.cifar_root, world_size)


# --------------------------------------------------------------------------------------
# 1. SAM / base step time
# --------------------------------------------------------------------------------------
def bench_ratio(opts: Options) -> list[dict[str, Any]]:
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        overrides = [*opts.run_overrides(work), f"trainer.amp={opts.precision}"]
        runs = {
            "base": bench_run(compose([*overrides, "sam=none"])),
            "sam": bench_run(compose(overrides)),
        }
        steps = {name: train_step(run, images, targets) for name, run in runs.items()}
        row = head_to_head(opts, steps, "sam", "base", "sam_over_base")
        for name in runs:
            row[f"{name}_images_per_s"] = work.batch_size / row[name]["median_s"]
        results.append({"workload": work.label, "key": key, **row})
        _log(f"ratio {work.label}: SAM/base {results[-1]['sam_over_base']:.3f}")
    return results


# --------------------------------------------------------------------------------------
# 2. Trainer efficiency
# --------------------------------------------------------------------------------------
def bench_trainer(opts: Options) -> list[dict[str, Any]]:
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        cfg = compose(opts.run_overrides(work))
        run = bench_run(cfg)
        minimal = MinimalSAMLoop(copy.deepcopy(run.model), cfg, opts.device, run.steps_per_epoch)
        steps = {
            "trainer": train_step(run, images, targets),
            "minimal": functools.partial(minimal.train_step, images, targets),
        }
        row = head_to_head(opts, steps, "minimal", "trainer", "trainer_efficiency")
        results.append({"workload": work.label, "key": key, **row})
        _log(f"trainer {work.label}: efficiency {results[-1]['trainer_efficiency']:.3f}")
    return results


# --------------------------------------------------------------------------------------
# 3. Memory
# --------------------------------------------------------------------------------------
def tensors_held(root: Any, skip: tuple[Any, ...] = ()) -> dict[tuple[str, int], torch.Tensor]:
    """Every tensor storage reachable from ``root`` through containers and attributes.

    Keys identify storages (device, address), so views and repeated references count once;
    the value is one tensor on that storage. Objects in ``skip`` are not entered.
    """
    skip_ids = {id(obj) for obj in skip}
    found: dict[tuple[str, int], torch.Tensor] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip_ids:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.setdefault((str(obj.device), obj.untyped_storage().data_ptr()), obj)
            if obj.grad is not None:
                stack.append(obj.grad)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
    return found


def _nbytes(tensors: dict[Any, torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors.values())


def sam_extra_bytes(optimizer: SAM, model: nn.Module) -> dict[str, Any]:
    """Bytes the SAM object keeps beyond the parameters, their gradients and the base state.

    Split into tensors shaped like a parameter (copies of weights) and anything else.
    """
    base = optimizer.base_optimizer
    base_state = tensors_held(list(base.state.values()))  # the keys are the parameters
    shared = {**tensors_held(list(model.parameters())), **base_state}
    held = tensors_held(optimizer, skip=(base,))
    extra = {key: t for key, t in held.items() if key not in shared}
    shapes = [tuple(p.shape) for p in model.parameters()]
    copies = {}
    for key, tensor in extra.items():
        if tuple(tensor.shape) in shapes:
            shapes.remove(tuple(tensor.shape))
            copies[key] = tensor
    others = [t for key, t in extra.items() if key not in copies]
    return {
        "sam_extra_bytes": _nbytes(extra),
        "sam_weight_copy_bytes": _nbytes(copies),
        "sam_other_bytes": sum(t.untyped_storage().nbytes() for t in others),
        "sam_other_tensors": [
            f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in others
        ],
        "base_state_bytes": _nbytes(base_state),
    }


def bench_memory(opts: Options) -> list[dict[str, Any]]:
    """What SAM keeps between steps, measured on the objects after two training steps."""
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        run = bench_run(compose(opts.run_overrides(work)))
        model, step = run.model, run.step
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for _ in range(2):
            step(images, targets)
        held = sam_extra_bytes(run.optimizer, model)
        # What the step itself holds: everything it references but the built objects.
        step_held = tensors_held(step, skip=(model, run.train_model, run.optimizer, step.criterion))
        # Not the step's own: the model's buffers, and the first-pass gradient norm it reports,
        # which is SAM's tensor (counted in SAM's extra memory).
        not_step = tensors_held([*model.buffers(), run.optimizer.last_grad_norm])
        row = {
            "workload": work.label,
            "key": key,
            "param_bytes": param_bytes,
            **held,
            "sam_extra_over_params": held["sam_extra_bytes"] / param_bytes,
            "sam_weight_copies_over_params": held["sam_weight_copy_bytes"] / param_bytes,
            # The step's copies of the norm-layer statistics: frozen for the second pass, and
            # put back when a step is skipped (non-finite gradient).
            "running_stats_snapshot_bytes": _nbytes(
                {k: t for k, t in step_held.items() if k not in not_step}
            ),
        }
        if opts.device.type == "cuda":
            row.update(_cuda_memory(opts, work, images, targets))
        results.append(row)
        _log(f"memory {work.label}: SAM extra {row['sam_extra_over_params']:.4f}x params")
    return results


def _cuda_memory(
    opts: Options, work: Workload, images: torch.Tensor, targets: torch.Tensor
) -> dict[str, int]:
    """The allocator's view on CUDA: bytes held after a step and the step's peak."""
    out = {}
    for name, extra in (("base", ["sam=none"]), ("sam", [])):
        gc.collect()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(opts.device)
        run = bench_run(compose([*opts.run_overrides(work), *extra]))
        run.step(images, targets)
        torch.cuda.synchronize(opts.device)
        torch.cuda.reset_peak_memory_stats(opts.device)
        run.step(images, targets)
        torch.cuda.synchronize(opts.device)
        out[f"cuda_{name}_held_bytes"] = torch.cuda.memory_allocated(opts.device) - start
        out[f"cuda_{name}_peak_bytes"] = torch.cuda.max_memory_allocated(opts.device) - start
        del run
    out["cuda_sam_extra_held_bytes"] = out["cuda_sam_held_bytes"] - out["cuda_base_held_bytes"]
    return out


# --------------------------------------------------------------------------------------
# 4. DDP communication
# --------------------------------------------------------------------------------------
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
        _log(
            f"ddp {work.label}: SAM default {default['allreduces_per_step']:g} bucket "
            f"all-reduce(s) per step, {default['buckets']} bucket(s), "
            f"{default['buffer_broadcasts_per_step']:g} buffer broadcast(s)"
        )
    return results


# --------------------------------------------------------------------------------------
# 5. Data loading against training
# --------------------------------------------------------------------------------------
def write_synthetic_cifar10(root: Path, train_images: int, test_images: int) -> Path:
    """Random images in torchvision's CIFAR-10 pickle layout (five train batches, one test)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    files = {f"data_batch_{i}": train_images // 5 for i in range(1, 6)}
    files["test_batch"] = test_images
    for name, count in files.items():
        entry = {
            "data": rng.integers(0, 256, size=(count, 3072), dtype=np.uint8),
            "labels": rng.integers(0, 10, size=count).tolist(),
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, handle)
    return root


def _epoch(loader, device: torch.device) -> Callable[[], None]:
    """One full pass over a loader; the clock starts before its workers get the indices."""

    def run() -> None:
        for _images, _targets in loader:
            pass
        synchronize(device)

    return run


def bench_data(opts: Options) -> list[dict[str, Any]]:
    """Images/s of each loader alone (full epochs) and of SAM training, interleaved."""
    results = []
    for dataset in dict.fromkeys(opts.work[key].dataset for key in opts.selected):
        keys = [key for key in opts.selected if opts.work[key].dataset == dataset]
        # digits as the quickstart reads it (no loader workers)
        extra = ["experiment=quickstart"] if dataset == "digits" else []
        cfg = compose([*opts.run_overrides(opts.work[keys[0]]), *extra])
        strategy = build.run_strategy(cfg)
        data = build.build_data(cfg, strategy)
        batch_size = opts.work[keys[0]].batch_size
        kinds = ["dataloader", "gpu"] if dataset in ("cifar10", "cifar100") else ["dataloader"]
        configs: dict[str, Callable[[], Any]] = {}
        for kind in kinds:
            kind_cfg = copy.deepcopy(cfg)
            kind_cfg.dataset.loader = kind
            loaders = build.build_run_loaders(kind_cfg, data, strategy, batch_size, seed=0)
            configs[kind] = _epoch(loaders.train, opts.device)
        labels = {}
        for key in keys:
            work = opts.work[key]
            images, targets = make_batch(work, opts.device)
            run = bench_run(compose([*opts.run_overrides(work), *extra]))
            configs[work.label] = train_step(run, images, targets)
            labels[work.label] = work
        # A loader "call" is a full epoch, a training call one step; both alternate.
        times = time_interleaved(
            configs, device=opts.device, warmup=1, reps=max(3, (opts.reps + 1) // 2)
        )
        epoch_images = len(data.train) // batch_size * batch_size
        row: dict[str, Any] = {
            "dataset": dataset,
            "train_images": len(data.train),
            "batch_size": batch_size,
            "num_workers": cfg.trainer.num_workers,
            "loaders": {
                kind: {
                    "images_per_s": epoch_images / statistics.median(times[kind]),
                    **summary(times[kind]),
                }
                for kind in kinds
            },
            "training": {},
        }
        loader_rate = row["loaders"]["dataloader"]["images_per_s"]
        for label, work in labels.items():
            rate = work.batch_size / statistics.median(times[label])
            row["training"][label] = {
                "images_per_s": rate,
                "loader_over_training": loader_rate / rate,
                **summary(times[label]),
            }
        results.append(row)
        _log(f"data {dataset}: DataLoader {loader_rate:.0f} images/s")
    return results


# --------------------------------------------------------------------------------------
# 6. torch.compile against eager
# --------------------------------------------------------------------------------------
def bench_compile(opts: Options) -> list[dict[str, Any]]:
    """``trainer.compile=true``: the run's step through ``torch.compile(model)``, SAM steps."""
    results = []
    for key in opts.compile_workloads:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        overrides = opts.run_overrides(work)
        eager = bench_run(compose(overrides))
        compiled = bench_run(compose([*overrides, "trainer.compile=true"]))
        try:
            start = time.perf_counter()
            compiled.step(images, targets)  # compiles the forward and backward graphs
            synchronize(opts.device)
            compile_s = time.perf_counter() - start
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            results.append({"workload": work.label, "key": key, "error": repr(err)[:300]})
            _log(f"compile {work.label}: failed: {err!r}"[:200])
            continue
        steps = {
            "eager": train_step(eager, images, targets),
            "compiled": train_step(compiled, images, targets),
        }
        row = {"workload": work.label, "key": key, "compile_s": compile_s}
        row.update(head_to_head(opts, steps, "eager", "compiled", "speedup"))
        results.append(row)
        _log(
            f"compile {work.label}: {row['speedup']:.2f}x eager (compiling took {compile_s:.0f} s)"
        )
    return results


# --------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------
def _log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info(device: torch.device) -> dict[str, Any]:
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "git_commit": _git_commit(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def headline(row: dict[str, Any], key: str) -> tuple[float, str]:
    """The ratio a target is judged on: the median of the back-to-back ratios of CPU time
    where that is the work (one CPU thread), else of wall time."""
    if row.get(key + "_cpu") is not None:
        return row[key + "_cpu"], "paired CPU time"
    return row[key + "_paired"], "paired wall time"


def _ratio_cell(row: dict[str, Any], key: str, digits: int = 3) -> str:
    value, basis = headline(row, key)
    return (
        f"**{value:.{digits}f}** ({basis}; medians of wall times {row[key]:.{digits}f}, "
        f"paired {row[key + '_paired']:.{digits}f})"
    )


def _ms(stats: dict[str, float]) -> str:
    return f"{1e3 * stats['median_s']:.1f}"


def markdown(report: dict[str, Any]) -> str:
    """The targets table, then one table per section."""
    meta, machine = report["meta"], report["meta"]["machine"]
    gpu = f", {machine['gpu']}" if "gpu" in machine else ""
    lines = [
        f"`{meta['command']}` at commit {machine['git_commit']}: torch {machine['torch']}, "
        f"{machine['device']}{gpu}, {machine['threads']} thread(s) on {machine['cpu_count']} "
        f"cores; medians of {meta['reps']} interleaved repetitions after {meta['warmup']} "
        f"warm-up step(s); {meta['wall_s']} s in all.",
        f"The machine was shared: load average {meta['load_before'][0]} before, "
        f"{meta['load_after'][0]} after. Absolute times suffer; each comparison is "
        "interleaved and judged on its paired ratio (the median over repetitions of the "
        "back-to-back ratio) of CPU time where that is the work (one thread), else of wall "
        "time.",
        "",
        "| measure | workload | measured | target | met |",
        "|---|---|---|---|---|",
    ]
    t = report["targets"]
    for row in report.get("ratio", []):
        value, _ = headline(row, "sam_over_base")
        lines.append(
            f"| SAM step / base step | {row['workload']} | {_ratio_cell(row, 'sam_over_base')} "
            f"| <= {t['sam_over_base']} | {_met(value <= t['sam_over_base'])} |"
        )
    for row in report.get("trainer", []):
        value, _ = headline(row, "trainer_efficiency")
        lines.append(
            f"| trainer efficiency (minimal loop / SAMStep) | {row['workload']} | "
            f"{_ratio_cell(row, 'trainer_efficiency')} | >= {t['trainer_efficiency']} | "
            f"{_met(value >= t['trainer_efficiency'])} |"
        )
    for row in report.get("memory", []):
        value = row["sam_weight_copies_over_params"]
        other = ", ".join(row["sam_other_tensors"]) or "nothing"
        lines.append(
            f"| SAM extra memory / parameter bytes | {row['workload']} | {value:.3f} "
            f"(weight copies, {row['sam_weight_copy_bytes'] / 2**20:.2f} MiB) + "
            f"{row['sam_other_bytes']} B ({other}) | "
            f"<= {t['sam_extra_memory_over_params']} | "
            f"{_met(value <= t['sam_extra_memory_over_params'])} |"
        )
    for row in report.get("ddp", []):
        default = row["sam default"]
        reductions = default["allreduces_per_step"] / max(default["buckets"], 1)
        lines.append(
            f"| gradient all-reduces per step, DDP default (per bucket) | {row['workload']} | "
            f"{reductions:g} ({default['allreduces_per_step']:g} calls, "
            f"{default['buckets']} bucket(s)) | 1 | {_met(reductions == 1)} |"
        )
    for row in report.get("data", []):
        for label, train in row["training"].items():
            value = train["loader_over_training"]
            target = t["loader_over_training"] if row["dataset"].startswith("cifar") else None
            lines.append(
                f"| loader / SAM training images/s ({row['dataset']}, "
                f"{row['num_workers']} workers) | {label} | {value:.1f} | "
                + (f">= {target} | {_met(value >= target)} |" if target else "- | - |")
            )
    for row in report.get("compile", []):
        if "error" in row:
            lines.append(f"| torch.compile speed-up | {row['workload']} | failed | - | - |")
        else:
            lines.append(
                f"| torch.compile speed-up (eager / compiled) | {row['workload']} | "
                f"{_ratio_cell(row, 'speedup', 2)} | - | - |"
            )
    return "\n".join(lines + _detail_tables(report)) + "\n"


def _detail_tables(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if report.get("ratio"):
        lines += [
            "",
            "| workload | base ms/step | SAM ms/step | SAM images/s |",
            "|---|---|---|---|",
        ]
        for row in report["ratio"]:
            lines.append(
                f"| {row['workload']} | {_ms(row['base'])} | {_ms(row['sam'])} | "
                f"{row['sam_images_per_s']:.0f} |"
            )
    if report.get("trainer"):
        lines += ["", "| workload | minimal loop ms/step | SAMStep ms/step |", "|---|---|---|"]
        for row in report["trainer"]:
            lines.append(f"| {row['workload']} | {_ms(row['minimal'])} | {_ms(row['trainer'])} |")
    if report.get("memory"):
        lines += [
            "",
            "| workload | parameters MiB | base optimizer state MiB | SAM extra MiB | "
            "SAMStep's running-stats snapshots KiB |",
            "|---|---|---|---|---|",
        ]
        for row in report["memory"]:
            lines.append(
                f"| {row['workload']} | {row['param_bytes'] / 2**20:.2f} | "
                f"{row['base_state_bytes'] / 2**20:.2f} | {row['sam_extra_bytes'] / 2**20:.2f} | "
                f"{row['running_stats_snapshot_bytes'] / 2**10:.1f} |"
            )
    if report.get("ddp"):
        lines += [
            "",
            "| DDP, 2 processes, gloo | mode | all-reduce calls/step | MiB/step | "
            "buffer broadcasts/step | ms/step (not interleaved) |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["ddp"]:
            for mode in DDP_MODES:
                m = row[mode]
                lines.append(
                    f"| {row['workload']} | {mode} | {m['allreduces_per_step']:g} | "
                    f"{m['allreduce_bytes_per_step'] / 2**20:.2f} | "
                    f"{m['buffer_broadcasts_per_step']:g} | {1e3 * m['step_s']:.0f} |"
                )
    if report.get("fsdp"):
        lines += bench_sharding.markdown_rows(report["fsdp"])
    if report.get("data"):
        lines += ["", "| data set | what | images/s |", "|---|---|---|"]
        for row in report["data"]:
            for kind, stats in row["loaders"].items():
                what = (
                    f"DataLoader, {row['num_workers']} workers, batch {row['batch_size']}"
                    if kind == "dataloader"
                    else f"dataset.loader=gpu on {report['meta']['machine']['device']}"
                )
                lines.append(f"| {row['dataset']} | {what} | {stats['images_per_s']:.0f} |")
            for label, train in row["training"].items():
                lines.append(
                    f"| {row['dataset']} | SAM training, {label} | {train['images_per_s']:.0f} |"
                )
    if report.get("compile"):
        lines += [
            "",
            "| workload | eager ms/step | compiled ms/step | first compiled step s |",
            "|---|---|---|---|",
        ]
        for row in report["compile"]:
            if "error" not in row:
                lines.append(
                    f"| {row['workload']} | {_ms(row['eager'])} | {_ms(row['compiled'])} | "
                    f"{row['compile_s']:.0f} |"
                )
    return lines


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="sam-train benchmarks (see the module docstring for what each measures)"
    )
    parser.add_argument("--quick", action="store_true", help="the `make bench` preset")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument(
        "--workloads", default="cnn_cifar,wrn16_4,cnn_digits", help="comma-separated"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (--quick on a CPU: 1)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="of the CIFAR workloads")
    parser.add_argument("--warmup", type=int, default=None, help="steps before timing")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions")
    parser.add_argument("--min-rep-s", type=float, default=None, help="seconds per repetition")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--data-images", type=int, default=5000, help="synthetic CIFAR images")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = parser.parse_args(argv)
    exit_on_problems("bench", [expect_folder(args.out, "a folder for results", exists=False)])
    return args


def make_options(args: argparse.Namespace) -> Options:
    """What the command line asks for; sets torch's CPU threads."""
    device = build.resolve_device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick and not on_gpu:
        # Multi-threaded CPU kernels stall whenever another process holds one of the cores
        # (each parallel region waits for its slowest thread), which on a shared machine
        # swamps what is measured; one thread keeps the quick run's ratios meaningful.
        torch.set_num_threads(1)
    work = workloads(args.batch_size or (128 if on_gpu else 32))
    selected = args.workloads.split(",")
    sections = args.sections.split(",")
    unknown = [n for n in selected if n not in work] + [n for n in sections if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"bench.py: unknown workload or section: {', '.join(unknown)}")
    quick = args.quick
    return Options(
        device=device,
        warmup=args.warmup if args.warmup is not None else (1 if quick else 3),
        reps=args.reps or (7 if quick else 15),
        min_rep_s=args.min_rep_s if args.min_rep_s is not None else (1.0 if quick else 2.0),
        precision=args.amp,
        work=work,
        selected=selected,
        data_images=args.data_images,
        ddp_steps=3 if quick else 10,
        # Compiling takes a minute or more per model on 2 CPU cores: one model when quick.
        compile_workloads=selected[:1] if quick and not on_gpu else selected,
        overrides=[f"trainer.device={device.type}"],
    )


RUNNERS: dict[str, Callable[[Options], list[dict[str, Any]]]] = {
    "ratio": bench_ratio,
    "trainer": bench_trainer,
    "memory": bench_memory,
    "ddp": bench_ddp,
    "fsdp": lambda opts: bench_sharding.bench_fsdp(opts),
    "data": bench_data,
    "compile": bench_compile,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    opts = make_options(args)
    register_configs()
    cfg = compose(opts.overrides)
    shown = argv if argv is not None else sys.argv[1:]
    report: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python scripts/bench.py", *shown]),
            "machine": machine_info(opts.device),
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "warmup": opts.warmup,
            "reps": opts.reps,
            "min_rep_s": opts.min_rep_s,
            "precision": opts.precision,
            "config": f"optimizer {cfg.optimizer.name} lr {cfg.optimizer.lr}, sam rho "
            f"{cfg.sam.rho}, scheduler {cfg.scheduler.name}",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "targets": TARGETS,
    }
    started = time.perf_counter()
    _log(f"device {opts.device}, {torch.get_num_threads()} thread(s), workloads {opts.selected}")
    with tempfile.TemporaryDirectory() as tmp:
        if "fsdp" in args.sections.split(",") or any(
            opts.work[key].dataset == "cifar10" for key in opts.selected
        ):
            root = write_synthetic_cifar10(Path(tmp) / "cifar", opts.data_images, 1000)
            opts.cifar_root = str(root)
        for section in SECTIONS:
            if section in args.sections.split(","):
                report[section] = RUNNERS[section](opts)
    report["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    _log(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    print(table)
    return report


if __name__ == "__main__":
    main()
