"""Section ``hot_path``: what a GPU would pay for, counted on any device rather than timed.

* host reads per step (``.item()``-class ops under a dispatch mode) of the default step, and
  of the same step under bf16 and with the base optimizer's foreach path (the masked copy);
* the peak extra bytes of SAM's bookkeeping on its first step: the weight backup plus every
  temporary, against the parameter bytes (recorded under a dispatch mode), the largest
  temporary (on the next step, once the backup exists: the per-tensor norms, one float per
  parameter tensor, nothing sized like a parameter), and the bytes of the non-finite mask's
  copy when the base optimizer is not fused;
* the base optimizer's implementations, ``optimizer.fused`` against ``optimizer.foreach``,
  interleaved: SAM step time of each;
* SAM's bookkeeping as a share of the step's CPU time: the ascent and restore, the norm-layer
  statistics' snapshots and the finiteness check (not the passes, not the base step).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch

from sam_train.profiling import Allocations, HostReads, tensor_bytes
from sam_train.sam import RunningStatsGuard
from sam_train.step.nonfinite import GradientCheck

from .options import Options
from .timing import head_to_head, log
from .workloads import Workload, bench_run, compose, make_batch, train_step

#: The configurations whose host reads are counted (overrides on top of the workload's).
READ_CONFIGS = {
    "default": [],
    "bf16": ["trainer.amp=bf16"],
    "foreach (masked copy)": ["optimizer.fused=false"],
}


def host_reads_per_step(opts: Options, work: Workload, extra: list[str], steps: int = 3) -> float:
    """Reads per step after two warm-up steps (the first creates the optimizer state)."""
    run = bench_run(compose([*opts.run_overrides(work), *extra]))
    images, targets = make_batch(work, opts.device)
    for _ in range(2):
        run.step(images, targets)
    with HostReads() as mode:
        for _ in range(steps):
            run.step(images, targets)
    return len(mode.reads) / steps


def sam_peak_bytes(opts: Options, work: Workload) -> dict[str, Any]:
    """SAM's first ascent and restore on a fresh run: backup plus temporaries, at their peak."""
    run = bench_run(compose(opts.run_overrides(work)))
    images, targets = make_batch(work, opts.device)
    model, optimizer = run.train_model, run.optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    with Allocations() as ascent:
        optimizer.first_step(zero_grad=True)
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    with Allocations() as restore:
        optimizer.restore()
    torch.nn.functional.cross_entropy(model(images), targets).backward()
    with Allocations() as again:  # the backup exists now: whatever is new is a temporary
        optimizer.first_step(zero_grad=True)
    optimizer.restore()
    param_bytes = tensor_bytes(params)
    backup = tensor_bytes(list(optimizer._backup.values()))
    peak = max(ascent.peak, backup + restore.peak)
    return {
        "param_bytes": param_bytes,
        "param_tensors": len(params),
        "sam_backup_bytes": backup,
        "sam_peak_extra_bytes": peak,
        "sam_temporary_bytes": peak - backup,
        "sam_largest_temporary_bytes": max(again.largest, restore.largest),
        "sam_peak_extra_over_params": peak / param_bytes,
    }


@contextlib.contextmanager
def _timed(owner: Any, name: str, total: list[float]) -> Iterator[None]:
    """Adds the CPU time of every call of ``owner.name`` to ``total[0]``."""
    original = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            total[0] += time.process_time() - start

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def bookkeeping_share(opts: Options, work: Workload) -> float:
    """CPU time in SAM's bookkeeping over the step's CPU time: the median over ``opts.reps``
    steps of each step's share, after one warm-up step (one step's share moves with the
    allocator's page faults and frees, so a total over a few steps is not a stable reading)."""
    run = bench_run(compose(opts.run_overrides(work)))
    images, targets = make_batch(work, opts.device)
    run.step(images, targets)
    total, shares = [0.0], []
    with contextlib.ExitStack() as stack:
        for owner, name in [
            (run.optimizer, "first_step"),
            (run.optimizer, "restore"),
            (RunningStatsGuard, "save"),
            (RunningStatsGuard, "restore"),
            (RunningStatsGuard, "restore_where"),
            (GradientCheck, "__call__"),
        ]:
            stack.enter_context(_timed(owner, name, total))
        for _ in range(max(opts.reps, 1)):
            total[0], start = 0.0, time.process_time()
            run.step(images, targets)
            shares.append(total[0] / (time.process_time() - start))
    return statistics.median(shares)


def bench_hot_path(opts: Options) -> list[dict[str, Any]]:
    results = []
    for key in opts.selected:
        work = opts.work[key]
        row: dict[str, Any] = {"workload": work.label, "key": key}
        row["host_reads_per_step"] = {
            name: host_reads_per_step(opts, work, extra) for name, extra in READ_CONFIGS.items()
        }
        row.update(sam_peak_bytes(opts, work))
        row["sam_bookkeeping_share"] = bookkeeping_share(opts, work)
        foreach = bench_run(compose([*opts.run_overrides(work), "optimizer.fused=false"]))
        for _ in range(2):  # the first step creates the optimizer state (no copy yet)
            foreach.step(*make_batch(work, opts.device))
        row["mask_copy_bytes_foreach"] = foreach.step._update.snapshot_bytes
        images, targets = make_batch(work, opts.device)
        steps = {
            "fused": train_step(bench_run(compose(opts.run_overrides(work))), images, targets),
            "foreach": train_step(foreach, images, targets),
        }
        row["optimizer_impl"] = head_to_head(opts, steps, "foreach", "fused", "foreach_over_fused")
        results.append(row)
        log(
            f"hot path {work.label}: reads/step {row['host_reads_per_step']}, SAM peak extra "
            f"{row['sam_peak_extra_over_params']:.4f}x params, bookkeeping "
            f"{100 * row['sam_bookkeeping_share']:.1f}% of the step, foreach/fused "
            f"{row['optimizer_impl']['foreach_over_fused']:.3f}"
        )
    return results
