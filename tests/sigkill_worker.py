"""``kill_at(STEP)``: callbacks that SIGKILL this process right after the callbacks of step
STEP (a checkpoint written at that step included), with every child process (wandb's
service): no handler, atexit or flush runs, as when a scheduler or the OOM killer ends the job.
``python tests/sigkill_worker.py STEP ARGS...`` runs sam-train ARGS so; test_logger_resume.py
calls :func:`main` in a forked child of the test process instead (no second import of torch)."""

import contextlib
import os
import signal
import sys
from pathlib import Path

import sam_train.train as train_module
from sam_train import cli
from sam_train.callbacks import Callback


def _children() -> list[int]:
    tasks = Path("/proc/self/task").iterdir()
    return [int(pid) for task in tasks for pid in (task / "children").read_text().split()]


class KillAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_step_end(self, trainer, state, output) -> None:
        if state.global_step == self.step:
            for pid in [*_children(), os.getpid()]:
                with contextlib.suppress(ProcessLookupError):  # a child that just ended
                    os.kill(pid, signal.SIGKILL)


def main(step: int, args: list[str]) -> None:
    """``sam-train ARGS``, killed after step ``step`` (in this process: patches the factory).

    Forked from a process whose wandb already runs, this one would inherit WANDB_SERVICE and
    register its run with that process's service, which the kill spares: the run would stay
    "in use" there, and its resume fail. A job killed by a scheduler has its own service."""
    os.environ.pop("WANDB_SERVICE", None)
    kill = KillAt(step)
    original = train_module.build_callbacks
    train_module.build_callbacks = lambda *a, **k: [*original(*a, **k), kill]
    sys.argv = ["sam-train", *args]
    cli.main()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
