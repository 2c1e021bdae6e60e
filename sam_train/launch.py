"""``sam-train ... trainer.nproc_per_node=N``: start N workers on this machine through torch's
own elastic agent (``torch.distributed.launcher.api.elastic_launch``, what ``torchrun
--standalone`` runs), and exit with sam-train's codes rather than torchrun's.

torchrun reports any worker's non-zero exit as its ``ChildFailedError`` traceback and exit 1,
and a SIGTERM sent to it (what a scheduler sends) as a ``SignalException`` traceback; a
requeue script then reads a failure. Here the agent's outcome becomes one exit code:

- 0 every worker finished; 2 bad input (the worker's one line, printed by rank 0); 75
  preempted (SIGTERM or SIGUSR1 to the launcher or to a worker: checkpoint, then continue
  with ``resume=auto``); 130 Ctrl-C (checkpoint); 1 a failed sweep job; a crash keeps the
  worker's code and traceback.
- The agent forwards SIGTERM, SIGINT and SIGUSR1 to the workers once (they run in their own
  session, so a terminal's Ctrl-C reaches them through the agent only: one Ctrl-C, one
  checkpoint) and waits up to ``SHUTDOWN_SECONDS`` for their checkpoint.
- Only rank 0 writes to the console; the other ranks' output goes to
  ``<tmp>/sam-train-launch-*/``, named in the one line reporting a rank that failed alone.

``trainer.nproc_per_node`` is read here and removed from the workers' command line: it says
how to launch, not how to train, so it is not part of the run's config.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from sam_train.errors import EXIT_INTERRUPTED, EXIT_PREEMPTED, EXIT_USER_ERROR

NPROC_KEY = "trainer.nproc_per_node"
LAUNCHER_ENV = "SAM_TRAIN_LAUNCHER"  # set in the workers: a stop exits 75, not 0 (see cli)
SHUTDOWN_SECONDS = 120  # a stopped worker's time to write its checkpoint
FORWARDED_SIGNALS = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
#: A worker's exit code -> the launcher's, the first found wins (a user error before a stop).
PRECEDENCE = (EXIT_USER_ERROR, EXIT_INTERRUPTED, EXIT_PREEMPTED)
SIGNAL_EXITS = {signal.SIGINT: EXIT_INTERRUPTED}  # any other forwarded signal: preempted


def split_nproc(args: Sequence[str]) -> tuple[int | None, list[str]]:
    """(N of ``trainer.nproc_per_node=N`` or None, the other arguments). Exits 2 with one
    line for a value that is not a positive integer."""
    nproc, rest = None, []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not (sep and key.lstrip("+") == NPROC_KEY):
            rest.append(arg)
            continue
        if not value.isdigit() or int(value) < 1:
            print(
                f"sam-train: error: {NPROC_KEY}={value}: expected a whole number of processes >= 1",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)
        nproc = int(value)
    return nproc, rest


def exit_code(codes: Sequence[int]) -> int:
    """The launcher's exit code for the workers' failed ``codes``."""
    for wanted in PRECEDENCE:
        if wanted in codes:
            return wanted
    return next((code for code in codes if code > 0), 1)


def _config(nproc: int, log_dir: str):
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
    from torch.distributed.launcher.api import LaunchConfig

    quiet = {rank: Std.ALL for rank in range(1, nproc)}  # rank 0 speaks for the run
    return LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # torchrun --standalone: a free port on this machine
        max_restarts=0,  # a stop is continued with resume=auto, never restarted behind it
        monitor_interval=0.5,
        logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects=quiet),
    )


def _quiet_agent() -> None:
    """The agent's log lines (signals received, a worker's exit code) restate what the
    workers and the exit code say; its loggers set their own levels, so each is raised."""
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch(nproc: int, args: Sequence[str]) -> int:
    """Run ``python -m sam_train ARGS`` in ``nproc`` workers; return sam-train's exit code."""
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", FORWARDED_SIGNALS)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # the store's C++ notices
    os.environ[LAUNCHER_ENV] = "1"
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    _quiet_agent()
    log_dir = tempfile.mkdtemp(prefix="sam-train-launch-")
    config = _config(nproc, log_dir)
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", "sam_train", *args)
    except SignalException as stop:
        return SIGNAL_EXITS.get(stop.sigval, EXIT_PREEMPTED)
    except ChildFailedError as failed:
        codes = {rank: failure.exitcode for rank, failure in failed.failures.items()}
        code = exit_code(list(codes.values()))
        if codes.get(0) != code:  # rank 0 did not say it (it finished, or was stopped first)
            rank = min((r for r, c in codes.items() if c == code), default=min(codes))
            print(_last_words(log_dir, rank, code), file=sys.stderr)
        return code
    return 0


def _last_words(log_dir: str, rank: int, code: int) -> str:
    """The last line a quiet rank wrote to stderr (its ``sam-train: error: ...`` line), or
    where its output is."""
    for log in Path(log_dir).glob(f"*/attempt_*/{rank}/stderr.log"):
        lines = log.read_text(errors="replace").strip().splitlines()
        if lines and code in PRECEDENCE:
            return lines[-1]
    return f"sam-train: error: rank {rank} exited with code {code}; its output is under {log_dir}"
