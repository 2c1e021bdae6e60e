"""Path arguments, read as written and checked in one line before any work.

Every command and script checks its path arguments with :func:`expect_file`,
:func:`expect_folder` or :func:`expect_new_file` before it builds anything: a run folder where
a checkpoint file is wanted is "a folder, expected a checkpoint file (.pt)", not "does not
exist"; an existing file where an output folder is wanted is refused before the work that
would end in writing there.

A sweep job's folder is named by its overrides (``experiment=quickstart,sam=sam``): passed
back as ``hydra.run.dir=<folder>`` Hydra's override grammar would read its ``=`` and ``,``
as syntax. :func:`quote_path_overrides` quotes the value of a path key that Hydra cannot
take as one value, so every path sam-train writes can be given back as written.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from sam_train.errors import EXIT_USER_ERROR

#: Overrides whose value is a file or folder path (the keys as written, without ``+``/``~``).
PATH_OVERRIDES = (
    "hydra.run.dir",
    "hydra.sweep.dir",
    "resume",
    "model.init_from",
    "dataset.root",
)


def _quoted(value: str) -> str | None:
    """``value`` in Hydra's quotes (None: it holds both kinds of quote and stays as it is)."""
    for quote in ("'", '"'):
        if quote not in value and not value.endswith("\\"):
            return f"{quote}{value}{quote}"
    return None


def quote_path_overrides(args: Sequence[str], *, multirun: bool) -> list[str]:
    """``args`` with each path override that Hydra would not read as one value quoted: one
    that does not parse, or (outside a multirun, where there is no sweep) a comma list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        quoted = _quoted(value) if sep and key.lstrip("+~") in PATH_OVERRIDES else None
        if quoted is not None:
            try:
                sweep = parser.parse_override(arg).is_sweep_override()
            except HydraException:
                sweep = None  # not Hydra's grammar: a path, as written
            if sweep is False or (sweep and multirun):
                quoted = None  # Hydra reads it as the user meant
        out.append(f"{key}={quoted}" if quoted is not None else arg)
    return out


CHECKPOINT_FILE = "a checkpoint file (.pt)"


def expect_file(path: str | Path, wanted: str = CHECKPOINT_FILE) -> str | None:
    """Why ``path`` is not the existing file a command wants (None: it is), in one line that
    says what it got and what it wants."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, expected {wanted}"
    if not path.exists():
        return f"{path} does not exist, expected {wanted}"
    if not path.is_file():
        return f"{path} is not a regular file, expected {wanted}"
    return None


def expect_folder(path: str | Path, wanted: str, *, exists: bool = True) -> str | None:
    """Why ``path`` is not the folder a command wants (None: it is); ``exists=False``: a folder
    to create or to write into, never an existing file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        return f"{path} is a file, expected {wanted}"
    if exists and not path.exists():
        return f"{path} does not exist, expected {wanted}"
    return None


def expect_new_file(path: str | Path, wanted: str) -> str | None:
    """Why ``path`` cannot be the file a command is to write (None: it can): a folder there."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder, expected {wanted}"
    return None


def exit_on_problems(prog: str, problems: Iterable[str | None]) -> None:
    """Before any work: the first problem as ``prog: error: ...`` on stderr, exit code 2."""
    for problem in problems:
        if problem is not None:
            print(f"{prog}: error: {problem}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
