"""Joining and leaving the process group that torchrun (or srun) describes in the environment.

torch.distributed does the work: NCCL on GPUs, gloo on CPU. A single process without those
variables runs with ``world_size == 1``. What a training step communicates is the
:mod:`sam_train.strategy` classes' business; this module only starts and ends processes.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout

from sam_train.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_ranks() -> tuple[int, int, int] | None:
    """(rank, local_rank, world_size) from torchrun, else from srun (one task per device).

    Reads the environment only, so the CLI can call it before anything else happens.
    """
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        ranks = int(env["RANK"]), int(env.get("LOCAL_RANK", 0)), int(env["WORLD_SIZE"])
        missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
        if ranks[2] > 1 and missing:
            raise ConfigError(
                f"RANK={ranks[0]} and WORLD_SIZE={ranks[2]} are set but {' and '.join(missing)} "
                "not: launch with torchrun, or unset RANK and WORLD_SIZE for a single process"
            )
        return ranks
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        missing = [key for key in ("MASTER_ADDR", "MASTER_PORT") if key not in env]
        if missing:
            raise ConfigError(
                f"SLURM launch with {env['SLURM_NTASKS']} tasks but {' and '.join(missing)} "
                "unset: export them in the sbatch script (README, 'Multi-GPU and mixed precision')"
            )
        return int(env["SLURM_PROCID"]), int(env.get("SLURM_LOCALID", 0)), int(env["SLURM_NTASKS"])
    return None


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Join the process group described by the environment; a lone process stays alone.

    ``device_type=None`` (the CLI, before the config is known) lets torch create both gloo and,
    when CUDA is present, NCCL; collectives then pick the backend by the tensor's device.
    """
    ranks = env_ranks()
    if ranks is None or ranks[2] == 1:
        return DistInfo()
    rank, local_rank, world_size = ranks
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        backend = {None: None, "cuda": "nccl"}.get(device_type, "gloo")
        timeout = rendezvous_timeout()
        try:
            with _native_stderr_held():
                dist.init_process_group(
                    backend,
                    store=restart_safe_store(world_size),
                    rank=rank,
                    world_size=world_size,
                    timeout=timeout,
                )
        except (RuntimeError, TimeoutError, ValueError) as err:  # DistStoreError, refused
            address = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
            raise ConfigError(
                f"rank {rank} of {world_size} could not join the process group at {address} "
                f"within {timeout.total_seconds():.0f} s ({_first_line(err)}); start every rank "
                "with torchrun, or unset RANK and WORLD_SIZE for a single process "
                f"({RENDEZVOUS_TIMEOUT_ENV} sets the wait)"
            ) from err
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size)


@contextmanager
def _native_stderr_held() -> Iterator[None]:
    """While a rank joins, c10d's C++ code writes every failed connection attempt to the
    process's stderr with its C++ stack frames (dozens of lines before the one line that
    says what happened). Hold the file descriptor's output: write it out if the rank joins,
    drop it if joining fails (the error names the address and the wait instead)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)  # reached only when joining worked: what it said is kept
        os.write(2, held.read())


RENDEZVOUS_TIMEOUT_ENV = "SAM_TRAIN_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT_S = 300.0


def rendezvous_timeout() -> timedelta:
    """How long a rank waits for the others: 5 minutes unless the environment says."""
    value = os.environ.get(RENDEZVOUS_TIMEOUT_ENV, str(DEFAULT_RENDEZVOUS_TIMEOUT_S))
    try:
        seconds = float(value)
    except ValueError:
        raise ConfigError(
            f"{RENDEZVOUS_TIMEOUT_ENV}={value!r} is not a number of seconds"
        ) from None
    if not seconds > 0:
        raise ConfigError(f"{RENDEZVOUS_TIMEOUT_ENV} must be > 0, got {value}")
    return timedelta(seconds=seconds)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def restart_safe_store(world_size: int) -> dist.Store | None:
    """The agent's store, namespaced by restart attempt, when torchrun shares its store.

    torchrun's c10d rendezvous hands the workers of every restart attempt the same TCPStore
    (``TORCHELASTIC_USE_AGENT_STORE``), and ``env://`` adds no per-attempt prefix. The keys
    that gloo and NCCL write at start-up (each rank's address) then survive a restart, and a
    restarted rank can read its peer's address from the dead attempt: "connectFullMesh
    failed ... Connection refused" (pytorch/pytorch#135712). Prefixing the keys with
    ``TORCHELASTIC_RESTART_COUNT`` (as torchelastic did before sharing the store) separates
    the attempts. That count is the same on every rank of a single-node job; agents on
    different nodes can count differently, so a multi-node job with restarts should opt out
    of the sharing instead, and gets a warning saying so. ``None`` keeps ``env://``.
    """
    env = os.environ
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return None
    if int(env.get("GROUP_WORLD_SIZE", "1")) > 1:
        if int(env.get("TORCHELASTIC_MAX_RESTARTS", "0")) > 0 and env.get("RANK") == "0":
            warnings.warn(
                "multi-node torchrun with --max-restarts shares one store across restarts; "
                "export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 so a restart cannot read the "
                "previous attempt's addresses (pytorch/pytorch#135712)",
                stacklevel=2,
            )
        return None
    agent_store = dist.TCPStore(
        env["MASTER_ADDR"],
        int(env["MASTER_PORT"]),
        world_size,
        is_master=False,
        timeout=default_pg_timeout,
    )
    attempt = env.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sam_train/attempt_{attempt}", agent_store)


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_worker(code: int = 0) -> NoReturn:
    """End a worker of a distributed job: leave the process group, flush, ``os._exit(code)``.

    The interpreter's own teardown is skipped on purpose. After DistributedDataParallel has
    been built, ``destroy_process_group`` no longer frees the gloo process group (its
    ``gloo_tcp_loop`` and ``pt_gloo_runloop`` threads outlive it, even once the DDP module is
    collected), and a process that tears down the interpreter with those threads still
    running sometimes aborts: "terminate called without an active exception", SIGABRT, after
    the last line of Python (on this project's CPU: 1 of 61 launches of a 20-line DDP script
    under torchrun, 1 of 35 killed-and-restarted sam-train runs). torchrun then reports a
    finished run as failed. Everything a run writes is closed by the time this is called;
    only the logs and streams need flushing.
    """
    cleanup()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


@contextmanager
def exits_worker() -> Iterator[None]:
    """Run a worker's body, then end the process through :func:`exit_worker`.

    ``SystemExit`` keeps the status Python would give it; any other exception leaves the
    process group and propagates, so its traceback is printed as usual.
    """
    try:
        yield
    except SystemExit as stop:
        exit_worker(exit_status(stop))
    except BaseException:
        cleanup()
        raise
    exit_worker(0)


def exit_status(stop: SystemExit) -> int:
    """The status Python would exit with for ``stop`` (printing a message code, as it does)."""
    if stop.code is None or isinstance(stop.code, int):
        return stop.code or 0
    print(stop.code, file=sys.stderr)
    return 1


def shared_time() -> float:
    """Rank 0's clock (seconds since the epoch) on every rank: one run folder name for all.

    Hydra resolves ``${now:...}`` in each process, so ranks started a second apart would
    write to different folders; the CLI names the folder from this instant instead.
    """
    stamp = torch.tensor([time.time()], dtype=torch.float64)
    if dist.is_initialized():
        dist.broadcast(stamp, src=0)
    return stamp.item()
