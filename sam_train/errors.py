"""Errors a user can fix, and the exit codes of every entry point. Kept free of heavy imports
so the CLI reports them fast.

The entry points print any ``SamTrainError`` as one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Iterable, Sequence
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


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to ``word`` (difflib, as Python's own "did you mean"), if any: the
    one source of every suggestion, for keys, group options, flags and choices alike."""
    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


def closest_flag(flag: str, options: Iterable[str]) -> str | None:
    """The long option nearest to ``flag``, compared without the dashes (``--lr`` is not near
    ``--run``, though with them difflib finds it so)."""
    long = {option.lstrip("-"): option for option in options if option.startswith("--")}
    near = closest(flag.lstrip("-"), long)
    return None if near is None else long[near]


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser for every command and script, whose mistakes (an unknown option, a
    missing argument, a bad choice or number) are one line and exit code 2, as every other bad
    input is, instead of argparse's usage block before the line; ``--help`` shows the usage.
    A misspelt flag or choice is answered with the nearest one (``did you mean --per-class?``);
    ``flag_hint(name, value)`` answers a flag that is no near miss (sam-eval's ``--batch-size
    8``: write ``trainer.batch_size=8``)."""

    def __init__(
        self, *args: Any, flag_hint: Callable[[str, str], str] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.flag_hint = flag_hint

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see --help)\n")

    def parse_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        parsed, extra = self.parse_known_args(args, namespace)
        self._refuse_unknown(extra, args)
        return parsed

    def parse_intermixed_args(
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> Any:
        parsed, extra = self.parse_known_intermixed_args(args, namespace)
        self._refuse_unknown(extra, args)
        return parsed

    def _refuse_unknown(self, extra: list[str], argv: Sequence[str] | None) -> None:
        if not extra:
            return
        message = f"unrecognized arguments: {' '.join(extra)}"
        flag = next((arg for arg in extra if arg.startswith("-")), None)
        argv = list(sys.argv[1:] if argv is None else argv)
        hint = None if flag is None else self._flag_suggestion(flag, argv)
        self.error(f"{message}; {hint}" if hint else message)

    def _flag_suggestion(self, arg: str, argv: list[str]) -> str | None:
        """``did you mean --per-class?``, else what ``flag_hint`` makes of it."""
        flag, _, value = arg.partition("=")
        near = closest_flag(flag, self._option_string_actions)
        if near is not None:
            return f"did you mean {near}?"
        if self.flag_hint is None:
            return None
        after = argv.index(arg) + 1 if arg in argv else len(argv)
        if not value and after < len(argv) and not argv[after].startswith("-"):
            value = argv[after]
        return self.flag_hint(flag.lstrip("-").replace("-", "_"), value or "...")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        """argparse's check of ``choices=``, naming the nearest choice."""
        choices = action.choices
        if choices is not None and value not in choices:
            near = closest(str(value), [str(choice) for choice in choices])
            if near is not None:
                listed = ", ".join(map(repr, choices))
                raise argparse.ArgumentError(
                    action, f"invalid choice: {value!r}; did you mean {near!r}? ({listed})"
                )
        super()._check_value(action, value)


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
