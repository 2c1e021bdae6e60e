"""``sam-compare``: finished and running runs side by side, in one table.

    sam-compare multirun/2026-12-06/01-19-40              # a sweep: every job in it
    sam-compare outputs/a outputs/b --format markdown
    sam-compare hp/sweep --format csv > runs.csv
    sam-compare hp/sweep --plot curves.png                # test top-1 per epoch (plot_runs)
    sam-compare hp/sweep --tensorboard tb && tensorboard --logdir tb

A row per run: what differs between the runs (the command-line overrides that are not shared,
read from each run's ``.hydra/overrides.yaml``), status, epochs, final / best / EMA top-1, best
epoch, passes per step, images/s and training time. A finished run's numbers are its
``results.json``; a running or stopped run's come from its ``metrics.csv`` so far. Status:
``running`` while a live process holds the run's lock, ``finished`` when ``results.json``
covers the configured epochs, ``stopped`` when a checkpoint is left to resume from, ``failed``
otherwise. Reads files only (no torch), so it answers at once.

``--tensorboard DIR`` makes a folder for ``tensorboard --logdir DIR`` in which each run is
named by what differs (``sam=none``, ``sam=sam``): TensorBoard names a run by its folder, and a
sweep job's folder lists every override, sorted by key. Each run's folder there holds links to
the run's event files (a resumed run's new file needs the command again).
"""

from __future__ import annotations

import argparse
import csv
import errno
import fcntl
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sam_train.errors import ArgumentParser
from sam_train.paths import exit_on_problems, expect_folder, expect_new_file
from sam_train.run_files import METRICS_NAME, RESULTS_NAME
from sam_train.run_folder import (
    CHECKPOINTS_DIR,
    LOCK_NAME,
    RUN_MARKER,
    job_log,
    unstarted_jobs,
    unstarted_jobs_problem,
)

VIEW_MARKER = ".sam-compare-view"  # a --tensorboard folder that the next call may rebuild
EVENTS_GLOB = "events.out.tfevents.*"  # TensorBoard's event files (SummaryWriter's names)
OVERRIDES = Path(".hydra") / "overrides.yaml"
FORMATS = ("text", "markdown", "csv")
#: column -> heading in text and markdown (csv uses the column names)
HEADINGS: dict[str, str] = {
    "run": "run",
    "status": "status",
    "epochs": "epochs",
    "final_acc1": "final top-1",
    "best_acc1": "best top-1",
    "best_epoch": "best epoch",
    "ema_acc1": "EMA top-1",
    "passes_per_step": "passes/step",
    "images_per_sec": "images/s",
    "train_seconds": "time (s)",
}
DECIMALS = {"final_acc1": 2, "best_acc1": 2, "ema_acc1": 2, "passes_per_step": 2}
DECIMALS |= {"images_per_sec": 1, "train_seconds": 1}


# ---------------------------------------------------------------------------- finding runs
def runs_under(path: Path) -> list[Path]:
    """The run ``path`` is, or the runs under it (a sweep, or any folder above runs), sorted."""
    if (path / RUN_MARKER).is_file():
        return [path]
    return sorted(p.parent.parent for p in path.rglob(str(RUN_MARKER)))


def run_folder_problem(path: Path) -> str | None:
    """Why ``path`` is not a run or a folder holding runs (None: it is)."""
    problem = expect_folder(path, "a run or sweep folder")
    if problem is None and not runs_under(path):
        no_run = f"{path} holds no sam-train run (no {RUN_MARKER} under it)"
        return unstarted_jobs_problem(path) or no_run
    return problem


def find_runs(paths: Sequence[Path]) -> list[Path]:
    """Run folders, in order, each once: a run given as is, a sweep expanded to its runs."""
    runs: list[Path] = []
    for path in paths:
        seen = {r.resolve() for r in runs}
        runs += [run for run in runs_under(path) if run.resolve() not in seen]
    return runs


def read_overrides(run_dir: Path) -> dict[str, str]:
    """The run's command-line overrides as ``{key: value}``, without ``hydra.*`` (where the run
    was written is not what it is)."""
    path = run_dir / OVERRIDES
    items = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    pairs = (str(item).partition("=") for item in items)
    return {key: value for key, _, value in pairs if not key.lstrip("+~").startswith("hydra.")}


def differing(overrides: Sequence[dict[str, str]]) -> list[str]:
    """Keys whose value is not the same in every run (a key some runs lack counts), in the
    order they first appear."""
    keys = list(dict.fromkeys(key for run in overrides for key in run))
    return [key for key in keys if len({run.get(key) for run in overrides}) > 1]


def is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (sam_train.run_folder.RunLock). A shared
    lock taken and dropped at once: a run that starts in that instant is refused once."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as err:
        return err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------- one row
def _metric_rows(run_dir: Path) -> list[dict[str, float]]:
    """metrics.csv as numbers (an empty cell, a run without EMA, left out of its row)."""
    path = run_dir / METRICS_NAME
    if not path.is_file():
        return []
    with path.open(newline="") as file:
        return [{k: float(v) for k, v in row.items() if v} for row in csv.DictReader(file)]


def _planned_epochs(run_dir: Path) -> int | None:
    config = yaml.safe_load((run_dir / RUN_MARKER).read_text()) or {}
    epochs = (config.get("trainer") or {}).get("epochs")
    return epochs if isinstance(epochs, int) else None


def _from_metrics(rows: list[dict[str, float]]) -> dict[str, Any]:
    """The table's numbers of a run so far, from its metrics.csv."""
    if not rows:
        return {}
    best = max(rows, key=lambda row: row.get("test_acc1", -math.inf))
    seconds = sum(row.get("epoch_seconds", 0.0) for row in rows)
    images = sum(row.get("epoch_seconds", 0.0) * row.get("images_per_sec", 0.0) for row in rows)
    return {
        "final_acc1": rows[-1].get("test_acc1"),
        "best_acc1": best.get("test_acc1"),
        "best_epoch": int(best["epoch"]),
        "ema_acc1": rows[-1].get("test_ema_acc1"),
        "images_per_sec": images / seconds if seconds else None,
        "train_seconds": seconds,
    }


def _from_results(results: dict[str, Any]) -> dict[str, Any]:
    """The table's numbers of a finished run, as its results.json reports them."""
    return {
        "final_acc1": results.get("final_acc1"),
        "best_acc1": results.get("best_acc1"),
        "best_epoch": results.get("best_epoch"),
        "ema_acc1": results.get("ema_final_acc1"),
        "passes_per_step": results.get("passes_per_step"),
        "images_per_sec": results.get("images_per_sec"),
        "train_seconds": results.get("train_seconds"),
    }


def summarize(run_dir: Path) -> dict[str, Any]:
    """One row of the table (without ``run``, which depends on the other runs)."""
    rows = _metric_rows(run_dir)
    planned = _planned_epochs(run_dir)
    results_path = run_dir / RESULTS_NAME
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    finished = bool(results) and results.get("epochs") == planned
    if is_running(run_dir):
        status = "running"
    elif finished:
        status = "finished"
    elif any((run_dir / CHECKPOINTS_DIR).glob("*.pt")):
        status = "stopped"
    else:
        status = "failed"
    numbers = _from_results(results) if finished and status == "finished" else _from_metrics(rows)
    done = int(rows[-1]["epoch"]) if rows else 0
    return {
        "status": status,
        "epochs": f"{done}/{planned if planned is not None else '?'}",
        **numbers,
        "path": str(run_dir),
    }


def compare(run_dirs: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(a row per run, labelled by what differs; the overrides every run shares)."""
    overrides = [read_overrides(run) for run in run_dirs]
    keys = differing(overrides)
    shared = {k: v for k, v in overrides[0].items() if k not in keys} if overrides else {}
    rows = []
    for run_dir, items in zip(run_dirs, overrides, strict=True):
        label = " ".join(f"{k}={items[k]}" for k in keys if k in items)
        rows.append({"run": label or run_dir.name, **summarize(run_dir)})
    labels = [row["run"] for row in rows]
    for row in rows:  # runs that differ in nothing given (re-runs): tell them by folder
        if labels.count(row["run"]) > 1:
            row["run"] = f"{row['run']} ({Path(row['path']).name})".lstrip()
    return rows, shared


# ---------------------------------------------------------------------------- output
def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column in DECIMALS and isinstance(value, int | float):
        return f"{value:.{DECIMALS[column]}f}"
    return str(value)


def render(rows: list[dict[str, Any]], shared: dict[str, str], fmt: str) -> str:
    """The table as text (aligned columns), markdown or csv (raw numbers and the run's path)."""
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=[*HEADINGS, "path"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
        return out.getvalue()
    cells = [[_cell(column, row.get(column)) for column in HEADINGS] for row in rows]
    heads = list(HEADINGS.values())
    common = " ".join(f"{k}={v}" for k, v in shared.items())
    intro = f"shared: {common}\n" if common else ""
    if fmt == "markdown":
        lines = [heads, ["---"] * len(heads), *cells]
        return intro + "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"
    widths = [max(len(line[i]) for line in [heads, *cells]) for i in range(len(heads))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in [heads, *cells]
    ]
    return intro + "\n".join(line.rstrip() for line in lines) + "\n"


def view_folder_problem(out: Path) -> str | None:
    """Why ``out`` cannot be a view (None: it is new, empty or an earlier view, rebuilt)."""
    problem = expect_folder(out, "a folder for the view (--tensorboard)", exists=False)
    taken = out.is_dir() and any(out.iterdir()) and not (out / VIEW_MARKER).is_file()
    if problem is None and taken:
        return f"{out} is not empty and not a sam-compare view (--tensorboard)"
    return problem


def tensorboard_view(rows: list[dict[str, Any]], out: Path) -> int:
    """Fill ``out`` with a folder per run, named by its row's label, of links to its event
    files; returns how many runs have events. A folder this function made before is rebuilt."""
    problem = view_folder_problem(out)
    if problem is not None:
        raise ValueError(problem)  # main() refuses it before any work
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():  # the previous view: folders of links only
        if old.is_dir() and not old.is_symlink():
            for link in old.iterdir():
                link.unlink()
            old.rmdir()
    (out / VIEW_MARKER).write_text("made by sam-compare --tensorboard; rebuilt on each call\n")
    linked = 0
    for row in rows:
        events = sorted(Path(row["path"]).glob(EVENTS_GLOB))
        if not events:
            continue
        folder = out / row["run"].replace("/", "_")
        folder.mkdir()
        for event in events:
            (folder / event.name).symlink_to(event.resolve())
        linked += 1
    return linked


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(
        prog="sam-compare",
        description="A table of sam-train runs side by side (a sweep folder: all its jobs).",
    )
    parser.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP")
    parser.add_argument("--format", choices=FORMATS, default="text", help="default: text")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw test top-1 curves")
    parser.add_argument(
        "--tensorboard", type=Path, metavar="DIR", help="a logdir naming runs by what differs"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    problems = [run_folder_problem(path) for path in args.paths]
    if args.plot is not None:
        problems.append(expect_new_file(args.plot, "the PNG file to write (--plot)"))
    if args.tensorboard is not None:
        problems.append(view_folder_problem(args.tensorboard))
    exit_on_problems("sam-compare", problems)
    runs = find_runs(args.paths)
    for path in args.paths:  # jobs the table cannot show, in a sweep with runs
        if jobs := unstarted_jobs(path):
            print(
                f"sam-compare: {len(jobs)} sweep job(s) under {path} started no run (not in the "
                f"table): see {job_log(jobs[0])}",
                file=sys.stderr,
            )
    rows, shared = compare(runs)
    sys.stdout.write(render(rows, shared, args.format))
    if args.tensorboard is not None:
        linked = tensorboard_view(rows, args.tensorboard)
        print(
            f"{linked} runs in {args.tensorboard}: tensorboard --logdir {args.tensorboard}",
            file=sys.stderr,
        )
    if args.plot is not None:
        from sam_train.run_curves import collect, plot

        curves = collect(runs, "test_acc1")
        if curves:
            plot(curves, args.plot, "test_acc1", "")
            print(f"wrote {args.plot}", file=sys.stderr)  # stdout holds the table alone
        else:
            print("sam-compare: no run has test_acc1 in metrics.csv yet: no plot", file=sys.stderr)


if __name__ == "__main__":
    main()
