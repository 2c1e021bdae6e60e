"""Path arguments, read as written and checked in one line before any work.

A sweep job's folder is named by its overrides (``experiment=quickstart,sam=sam``): passed
back as ``hydra.run.dir=<folder>`` Hydra's override grammar would read its ``=`` and ``,``
as syntax. :func:`quote_path_overrides` quotes the value of a path key that Hydra cannot
take as one value, so every path sam-train writes can be given back as written.
"""

from __future__ import annotations

from collections.abc import Sequence

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
