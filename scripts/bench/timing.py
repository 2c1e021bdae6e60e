"""Interleaved timing (A, B, A, B, ..., the order rotated every repetition): medians of
wall and CPU time, which other processes on a shared machine do not inflate."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .options import Options


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


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)
