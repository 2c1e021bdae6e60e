"""Errors a user can fix, and the exit codes of every entry point. Kept free of heavy imports
so the CLI reports them fast.

The entry points print any ``SamTrainError`` as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

EXIT_USER_ERROR = 2  # bad input, reported before any work
EXIT_PREEMPTED = 75  # EX_TEMPFAIL (SIGTERM, SIGUSR1): requeue and continue with resume=auto
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
EXIT_SWEEP_FAILED = 1  # a multirun in which a job failed


class SamTrainError(Exception):
    """Base of every error caused by input (config, data, checkpoint) rather than a bug."""


class ConfigError(SamTrainError, ValueError):
    """A configuration value to change; the message names the key."""


class DatasetError(SamTrainError, RuntimeError):
    """Data missing or malformed; the message names the path and the files expected."""


class CheckpointError(SamTrainError, RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the reason."""


class NonFiniteError(SamTrainError, FloatingPointError):
    """Training diverged: too many consecutive steps with a non-finite loss or gradient."""


class RunFolderError(SamTrainError, RuntimeError):
    """A run folder that this run may not use; the message names it and what to change."""


class RunFolderBusy(RunFolderError):
    """Another live sam-train process holds the run folder's lock."""


@dataclass
class StopRequest:
    """Why the run stops early, and the exit code the entry point should use."""

    reason: str
    exit_code: int


class StopTraining(Exception):
    """Raised by ``Trainer.fit`` after a requested stop, once callbacks saved the run. Here,
    not in the trainer, so the CLI can catch it without importing torch for a bad config."""

    def __init__(self, request: StopRequest, global_step: int) -> None:
        super().__init__(f"{request.reason} at step {global_step}")
        self.request = request
        self.global_step = global_step


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser for every command and script, whose mistakes (an unknown option, a
    missing argument, a bad choice or number) are one line and exit code 2, as every other bad
    input is, instead of argparse's usage block before the line; ``--help`` shows the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def exit_on_user_error(prog: str, command: Callable[[], object]) -> None:
    """Run ``command``; a ``SamTrainError`` becomes one line on stderr and exit code 2."""
    try:
        command()
    except SamTrainError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def run_entry_point(
    prog: str,
    parse_args: Callable[[list[str] | None], Any],
    run: Callable[[Any], object],
    argv: list[str] | None,
) -> None:
    """An entry point's ``main``: parse ``argv``, keep it on the namespace (for the run's record),
    run, and turn a ``SamTrainError`` into one line and exit code 2."""
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    exit_on_user_error(prog, lambda: run(args))
