"""How many threads torch computes with on the CPU: sam-train's choice, not the user's to know.

torch's default is one thread per core. Next to other busy processes (or the other ranks of a
torchrun launch) its threads wait for each other at every parallel region: on 2 cores at load
8, three quickstart epochs took 1:42 of training with 2 threads, 0:21 with 1. The default is this
process's share of the cores it may run on (``os.sched_getaffinity``), minus the cores other
work keeps busy (the load average, when the process may run on every core), at least 1.
``trainer.cpu_threads=N`` or an ``OMP_NUM_THREADS`` in the environment is taken as given.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; cgroup-limited containers set it)."""
    if hasattr(os, "sched_getaffinity"):
        return max(len(os.sched_getaffinity(0)), 1)
    return os.cpu_count() or 1


def busy_cores(cores: int, own_processes: int) -> int:
    """Of ``cores``, how many other work keeps busy: the 1-minute load average, less this
    launch's own processes. Only when this process may run on every core: the load average
    is the whole machine's, and a job given some of its cores (a SLURM or container CPU set)
    shares them with no one."""
    if cores < (os.cpu_count() or cores):
        return 0
    try:
        load = os.getloadavg()[0]
    except OSError:  # not on this platform
        return 0
    return min(round(max(load - own_processes, 0.0)), cores)


def choose_cpu_threads(requested: int | None, environ: Mapping[str, str] = os.environ) -> int:
    """The thread count for this process: ``requested``, else ``OMP_NUM_THREADS``, else this
    process's share of the free cores (the ranks of a launch on this host split them)."""
    if requested:
        return requested
    if environ.get("OMP_NUM_THREADS", "").isdigit() and int(environ["OMP_NUM_THREADS"]) > 0:
        return int(environ["OMP_NUM_THREADS"])
    local = max(int(environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    cores = usable_cores()
    return max((cores - busy_cores(cores, local)) // local, 1)


def set_cpu_threads(requested: int | None) -> int:
    """Apply :func:`choose_cpu_threads` to torch (intra-op threads); returns the count."""
    threads = choose_cpu_threads(requested)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    return threads
