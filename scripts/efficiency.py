"""The efficiency frontier: which SAM variant keeps SAM's gain on noisy labels, at what cost.

    python scripts/efficiency.py run                 # train what is missing (resumable)
    python scripts/efficiency.py run --budget-min 50 # stop starting runs after 50 minutes
    python scripts/efficiency.py costs               # x SGD CPU time per step, measured
    python scripts/efficiency.py table               # the Markdown table and docs/ figure

Protocol (issue 22): every variant trains ``experiment=paper/noisy_digits`` (digits, a 0.1M
parameter CNN, 60 epochs) at 40% and at 60% symmetric label noise. Each variant's
hyper-parameters are chosen on validation seeds 100-102 from the small grid ``GRID`` declared
below (before any run: it is part of the code's history), by the best mean clean test top-1;
that point is frozen and reported on seeds 0-4 (mean and sample standard deviation). A
variant whose grid has one point skips the tuning. Nothing is retuned on seeds 0-4.

Each run is its own ``sam-train`` process under ``runs/efficiency/`` (``resume=auto``): a forked
child of this one, which imports torch, timm and sam_train once (``--no-fork``: a new
interpreter, which pays those imports again, 7.8 s of CPU per run measured here). Its summary
(clean top-1, the measured ``passes_per_step`` and ``ascent_fraction`` from its results.json)
is merged into ``docs/efficiency_runs.json`` under a file lock as soon as it
finishes: a later session continues from the committed file without rerunning anything. Two
processes share the work (each claims a run before starting it); ``PRIORITY`` orders it, most
informative first. Costs: the step's CPU time (one thread, so a shared machine does not
inflate it) over whole 10-step cycles, interleaved with SGD's in one process, on the chosen
hyper-parameters; saved in the same JSON. The frontier table's cost scales it to the passes
the variant's reported runs counted (``run_cost``), so a variant whose first steps are not its
run's mix (AE-SAM) is charged for the mix; the cost table shows the timed steps as measured.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sam_train.errors import ArgumentParser
from sam_train.paths import exit_on_problems, expect_folder

REPO = Path(__file__).resolve().parents[1]
PRESET = "experiment=paper/noisy_digits"
NOISES = (0.4, 0.6)
TUNE_SEEDS = (100, 101, 102)
REPORT_SEEDS = (0, 1, 2, 3, 4)
RUNS_JSON = REPO / "docs" / "efficiency_runs.json"
FIGURE = REPO / "docs" / "efficiency_frontier.png"
#: label -> the overrides that select the variant (the preset's options otherwise).
VARIANTS: dict[str, list[str]] = {
    "SGD": ["sam=none"],
    "SAM": ["sam=sam"],
    "MSAM": ["sam=msam"],
    "LookSAM k=5": ["sam=looksam", "sam.k=5"],
    "interval k=2": ["sam=interval", "sam.k=2"],
    "interval k=5": ["sam=interval", "sam.k=5"],
    "RST p=0.5": ["sam=rst", "sam.probability=0.5"],
    "AE-SAM": ["sam=aesam"],
    "GSAM": ["sam=gsam"],
    "ASAM": ["sam=asam"],
    "F-SAM": ["sam=fsam"],
    "ESAM beta=0.5": ["sam=sam", "sam.perturb_fraction=0.5"],
    "ESAM SWP+SDS": ["sam=esam"],
    "K-SAM": ["sam=ksam"],
    "WSAM": ["sam=wsam"],
    "MESA": ["sam=mesa"],
    "SAF": ["sam=saf"],
    "bSAM": ["sam=bsam", "optimizer.momentum=0", "optimizer.weight_decay=0"],
}
#: label -> the grid its hyper-parameters are chosen from on TUNE_SEEDS (declared up front).
#: SAM's rho = 0.5 is the preset's; MSAM's radius is along the momentum (the probe in the
#: design notes: no gain at rho <= 1, 97% at rho = 4 at 40% noise, rho = 8 diverged at 60%);
#: ASAM's rho is relative to |w|, so its grid is larger.
RHOS = ("0.2", "0.5", "1.0")
GRID: dict[str, list[list[str]]] = {
    "SGD": [[]],
    "SAM": [[f"sam.rho={r}"] for r in RHOS],
    "MSAM": [[f"sam.rho={r}"] for r in ("1.0", "2.0", "4.0")],
    "LookSAM k=5": [[f"sam.rho={r}"] for r in RHOS],
    "interval k=2": [[f"sam.rho={r}"] for r in RHOS],
    "interval k=5": [[f"sam.rho={r}"] for r in RHOS],
    "RST p=0.5": [[f"sam.rho={r}"] for r in RHOS],
    "AE-SAM": [[f"sam.rho={r}"] for r in RHOS],
    "GSAM": [[f"sam.rho={r}"] for r in RHOS],
    "ASAM": [[f"sam.rho={r}"] for r in ("0.5", "1.0", "2.0")],
    "F-SAM": [[f"sam.rho={r}"] for r in RHOS],
    "ESAM beta=0.5": [[f"sam.rho={r}"] for r in RHOS],
    "ESAM SWP+SDS": [[f"sam.rho={r}"] for r in RHOS],
    "K-SAM": [[f"sam.rho={r}"] for r in RHOS],
    "WSAM": [[f"sam.rho={r}"] for r in RHOS],
    # the official weights 0.3 and 0.8; EMA decays for a 1260-step run (0.9998 is ImageNet's)
    "MESA": [
        [f"sam.trajectory_weight={w}", f"sam.ema_decay={d}"]
        for w in ("0.3", "0.8")
        for d in ("0.99", "0.999")
    ],
    "SAF": [[f"sam.trajectory_weight={w}"] for w in ("0.16", "0.3", "0.8")],  # the official
    # its own Adam-like step g_m / s: the learning rate is part of the grid (0.5: its default)
    "bSAM": [
        [f"optimizer.lr={lr}", f"sam.rho={r}"] for lr in ("0.1", "0.5") for r in ("0.05", "0.2")
    ],
}
#: (variant, noise) in the order the work is done: the candidates for the goal (MSAM and SAF,
#: about SGD's cost) and the baselines they are measured against first, then the rest from the
#: cheapest (x SGD CPU in the cost table) to the dearest, so the budget buys the most rows.
_BY_COST = (
    "LookSAM k=5", "interval k=5", "MESA", "RST p=0.5", "interval k=2", "K-SAM", "GSAM",
    "F-SAM", "ESAM beta=0.5", "ESAM SWP+SDS", "AE-SAM", "ASAM", "WSAM", "bSAM",
)  # fmt: skip
PRIORITY: list[tuple[str, float]] = [
    *((label, noise) for label in ("SGD", "MSAM", "SAM", "SAF") for noise in NOISES),
    *((label, noise) for label in _BY_COST for noise in NOISES),
]
CYCLE = 10  # steps timed together: a multiple of every k above
#: Timed from the first step: MESA's EMA forward starts at its start_epoch, so it is timed
#: with the term on (SAF's store reads and writes cost next to nothing either way).
COST_OVERRIDES: dict[str, list[str]] = {"MESA": ["sam.start_epoch=0"]}


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in text.lower())


def run_key(label: str, noise: float, point: list[str], seed: int) -> str:
    """The run's key in the JSON and its folder name under ``--out``."""
    return "/".join(
        [slug(label), f"noise{noise}", slug(" ".join(point)) or "default", f"seed{seed}"]
    )


# ---------------------------------------------------------------------------- the JSON store
@contextmanager
def locked_store(path: Path = RUNS_JSON) -> Iterator[dict[str, Any]]:
    """The store, read under an exclusive lock and written back on exit (two processes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        store = json.loads(path.read_text()) if path.exists() else {}
        store.setdefault("runs", {})
        store.setdefault("costs", {})
        yield store
        partial = path.with_suffix(".json.partial")  # a kill mid-write leaves the old file whole
        partial.write_text(json.dumps(store, indent=1, sort_keys=True) + "\n")
        os.replace(partial, path)


def read_store(path: Path = RUNS_JSON) -> dict[str, Any]:
    with locked_store(path) as store:
        return store


# ---------------------------------------------------------------------------- the protocol
def mean_acc(runs: dict[str, Any], keys: list[str]) -> float | None:
    values = [runs[k]["final_acc1"] for k in keys if k in runs]
    return statistics.mean(values) if len(values) == len(keys) else None


def chosen_point(label: str, noise: float, runs: dict[str, Any]) -> list[str] | None:
    """The grid point with the best mean top-1 on TUNE_SEEDS (earliest on ties); None until
    every tuning run of the grid has finished."""
    grid = GRID[label]
    if len(grid) == 1:
        return grid[0]
    scores = []
    for point in grid:
        score = mean_acc(runs, [run_key(label, noise, point, s) for s in TUNE_SEEDS])
        if score is None:
            return None
        scores.append(score)
    return grid[scores.index(max(scores))]


def pending_jobs(runs: dict[str, Any]) -> list[tuple[str, float, list[str], int]]:
    """The runs still to do that the protocol allows now, in PRIORITY order."""
    jobs = []
    for label, noise in PRIORITY:
        point = chosen_point(label, noise, runs)
        if point is None:
            todo = [(p, s) for p in GRID[label] for s in TUNE_SEEDS]
        else:
            todo = [(point, s) for s in REPORT_SEEDS]
        jobs += [(label, noise, p, s) for p, s in todo if run_key(label, noise, p, s) not in runs]
    return jobs


# ---------------------------------------------------------------------------- running
def claim(out: Path, key: str) -> bool:
    """Claim a run for this process (a file holding its pid); a dead process's claim lapses."""
    path = out / key / ".claim"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        pid = int(path.read_text() or 0)
        try:
            os.kill(pid, 0)
            return False
        except (ProcessLookupError, ValueError):
            path.unlink(missing_ok=True)
            return claim(out, key)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


#: What every run's process gets: one thread (two runners share 2 cores), this checkout's code.
RUN_ENV = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
SAM_TRAIN = [sys.executable, "-m", "sam_train"]  # the command printed for each run (users copy it)


def train(
    label: str, noise: float, point: list[str], seed: int, out: Path, fork: bool = True
) -> dict | None:
    """One ``sam-train`` run (resumed if interrupted); its summary, or None if it failed."""
    run_dir = out / run_key(label, noise, point, seed)
    args = [
        PRESET, *VARIANTS[label], *point, f"dataset.label_noise={noise}", f"seed={seed}",
        "logger=none", "resume=auto", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    print("$", " ".join([*SAM_TRAIN, *args]), flush=True)
    if (run_forked if fork else run_subprocess)(args):
        return None
    results = json.loads((run_dir / "results.json").read_text())
    keys = ("final_acc1", "passes_per_step", "ascent_fraction", "train_seconds")
    return {key: results.get(key) for key in keys}


def run_subprocess(args: list[str]) -> int:
    """``python -m sam_train ARGS`` in a new interpreter, which pays the imports again."""
    return subprocess.call([*SAM_TRAIN, *args], env={**os.environ, **RUN_ENV}, cwd=REPO)


def import_once() -> bool:
    """Import what a run imports, once, in this process (which then only forks): True when
    this process's ``sam_train`` is this checkout's, the code a subprocess would run.

    A process that forks must run no other thread (a lock it holds would never be released
    in the child): ``OMP_NUM_THREADS`` before torch sizes its pool from it, and no jemalloc
    purging thread for pyarrow, which scikit-learn imports through pandas. After this, the
    process has one thread (``/proc/self/task``, measured here).
    """
    from unittest import mock

    os.environ.update(RUN_ENV)
    with mock.patch.dict(os.environ, {"JE_ARROW_MALLOC_CONF": "background_thread:false"}):
        import sklearn.datasets  # the preset's data set (digits): scipy, pandas, pyarrow
        import sklearn.model_selection  # noqa: F401

    import sam_train
    import sam_train.cli
    import sam_train.train  # torch, torchvision, timm: most of the cost

    return Path(sam_train.__file__).resolve().parents[1] == REPO


def run_forked(args: list[str]) -> int:
    """``sam-train ARGS`` in a forked child of this process: its own process (global RNGs,
    Hydra's state, torch's threads, logging handlers), exit code and signals as a subprocess
    would have, without importing torch again; a crash or kill of the run is its exit code."""
    if not import_once():
        return run_subprocess(args)
    sys.stdout.flush()
    sys.stderr.flush()  # or the child's exit would write this process's buffers again
    child = multiprocessing.get_context("fork").Process(target=_sam_train_main, args=(args,))
    child.start()
    child.join()
    return child.exitcode


def _sam_train_main(args: list[str]) -> None:
    """The child: ``python -m sam_train ARGS`` from here on (its SystemExit is the exit code).

    It leaves without the exit handlers it inherited: they hold this process's resources
    (the imports register two ``TemporaryDirectory.cleanup``); a run registers none itself.
    """
    import logging

    from sam_train import cli

    os.environ.update(RUN_ENV)
    os.chdir(REPO)
    sys.argv = [str(Path(cli.__file__).with_name("__main__.py")), *args]
    try:
        cli.main()
    finally:
        logging.shutdown()  # the one exit handler that is the run's: flush and close its log


def next_job(out: Path, skip: set[str]) -> tuple[str, float, list[str], int] | None:
    """The first pending run this process could claim (not one that failed here)."""
    for job in pending_jobs(read_store()["runs"]):
        key = run_key(*job)
        if key not in skip and claim(out, key):
            return job
    return None


def run_all(out: Path, budget_s: float, tries: int = 2, fork: bool = True) -> int:
    """Train pending runs until none is left or the budget is spent (a failed run is tried
    ``tries`` times in all, resuming); 1 if one failed for good. ``fork``: each run in a
    forked child of this process (imports paid once), else in a new interpreter."""
    started, failures = time.monotonic(), {}
    while time.monotonic() - started < budget_s:
        job = next_job(out, {key for key, n in failures.items() if n >= tries})
        if job is None:
            break
        key = run_key(*job)
        summary = train(*job, out, fork=fork)
        (out / key / ".claim").unlink(missing_ok=True)
        if summary is None:
            failures[key] = failures.get(key, 0) + 1
            print(f"{key}: failed ({failures[key]} of {tries} tries)", flush=True)
            continue
        with locked_store() as store:
            store["runs"][key] = summary
    return int(any(n >= tries for n in failures.values()))


# ---------------------------------------------------------------------------- costs
def measure_costs(labels: list[str], reps: int) -> dict[str, dict[str, float]]:
    """label -> CPU ms per step, its ratio to SGD's and the passes counted, interleaved (one
    thread, this process), over whole cycles of CYCLE steps of ``run.step`` from a run's
    start, at the preset's options (the schedule is not advanced: warm-up's learning rate)."""
    import torch

    sys.path.insert(0, str(REPO / "scripts"))
    from bench import bench_run, compose, median_ratio, time_interleaved

    torch.set_num_threads(1)
    labels = ["SGD", *[label for label in labels if label != "SGD"]]
    cycles, runs = {}, {}
    for label in labels:
        overrides = [*VARIANTS[label], *COST_OVERRIDES.get(label, [])]
        run = bench_run(compose([PRESET, *overrides, "trainer.num_workers=0"]))
        batch = next(iter(run.loaders.train))  # (images, targets[, indices for SAF])
        runs[label] = run
        cycles[label] = lambda run=run, batch=batch: [run.step(*batch) for _ in range(CYCLE)]
    timings = time_interleaved(cycles, device=torch.device("cpu"), warmup=1, reps=reps)
    return {
        label: {
            "cpu_ms": round(1e3 * statistics.median(timings.cpu[label]) / CYCLE, 2),
            "x_sgd": round(median_ratio(timings.cpu[label], timings.cpu["SGD"]), 3),
            # what the timed steps computed (the step's own count)
            "passes_per_step": runs[label].step.counts.summary()["passes_per_step"],
        }
        for label in labels
    }


# ---------------------------------------------------------------------------- the table
def row(label: str, noise: float, store: dict[str, Any]) -> dict[str, Any]:
    """What the protocol has measured for one variant at one noise level."""
    runs = store["runs"]
    point = chosen_point(label, noise, runs)
    tuned = sum(run_key(label, noise, p, s) in runs for p in GRID[label] for s in TUNE_SEEDS)
    found = (
        {}
        if point is None
        else {s: runs.get(run_key(label, noise, point, s)) for s in REPORT_SEEDS}
    )
    done = {seed: r for seed, r in found.items() if r is not None}
    by_seed = {seed: r["final_acc1"] for seed, r in done.items()}
    acc = list(by_seed.values())
    passes = [r["passes_per_step"] for r in done.values() if r.get("passes_per_step") is not None]
    return {
        "label": label,
        "point": None if point is None else " ".join(point) or "-",
        "tuned": tuned if len(GRID[label]) > 1 else None,
        "grid_runs": len(GRID[label]) * len(TUNE_SEEDS),
        "acc": acc,
        "by_seed": by_seed,
        "passes": statistics.mean(passes) if passes else None,
        "x_sgd": run_cost(store["costs"].get(label), statistics.mean(passes) if passes else None),
    }


def paired_gap(label: str, noise: float, store: dict[str, Any]) -> list[float]:
    """Top-1 minus SAM's, seed by seed: a seed draws the noisy labels and the initial weights
    (the test images are fixed), so the pair differs only by the method, and its spread is the
    one the goal's 0.5 point is to be read against."""
    mine, sam = row(label, noise, store)["by_seed"], row("SAM", noise, store)["by_seed"]
    return [mine[seed] - sam[seed] for seed in REPORT_SEEDS if seed in mine and seed in sam]


def run_cost(timed: dict[str, Any] | None, passes: float | None) -> float | None:
    """× SGD CPU at a whole run's mix of steps: the timed cost (``costs``, from a run's start)
    scaled to the passes the variant's runs counted, SGD's one pass costing 1. The timed steps
    need not be a run's mix: AE-SAM's threshold c_t and its statistics start where every step
    is a SAM step (2 passes timed), and its runs take the ascent on part of the steps only."""
    if timed is None:
        return None
    x, timed_passes = timed["x_sgd"], timed.get("passes_per_step")
    if passes is None or timed_passes is None or timed_passes <= 1.0:
        return x  # one pass timed (MSAM, SAF): nothing to scale
    return round(1 + (x - 1) * (passes - 1) / (timed_passes - 1), 3)


def _cell(values: list[float], empty: str = "not run", sign: str = "") -> str:
    if not values:
        return empty
    spread = f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):{sign}.1f}{spread}"


def table(store: dict[str, Any]) -> str:
    lines = []
    for noise in NOISES:
        if not any(key.split("/")[1] == f"noise{noise}" for key in store["runs"]):
            lines += [f"**{noise:.0%} label noise**: nothing has run yet.", ""]
            continue
        lines += [
            f"**{noise:.0%} label noise** (seeds {REPORT_SEEDS[0]}-{REPORT_SEEDS[-1]})",
            "",
            "| variant | chosen (seeds 100-102) | passes / step | × SGD CPU | top-1 (%) | seeds "
            "| − SAM, same seeds |",
            "|---|---|---|---|---|---|---|",
        ]
        for label in VARIANTS:
            r = row(label, noise, store)
            point = r["point"] or f"tuning: {r['tuned']}/{r['grid_runs']} runs"
            passes = "" if r["passes"] is None else f"{r['passes']:.2f}"
            x_sgd = "" if r["x_sgd"] is None else f"{r['x_sgd']:.2f}"
            gap = "" if label == "SAM" else _cell(paired_gap(label, noise, store), "", "+")
            lines.append(
                f"| {label} | {point} | {passes} | {x_sgd} | {_cell(r['acc'])} | {len(r['acc'])} "
                f"| {gap} |"
            )
        lines.append("")
    return "\n".join(lines)


def cost_table(store: dict[str, Any]) -> str:
    """Every variant's measured cost at the start of a run (``costs``), whatever has trained."""
    lines = [
        "| variant | passes / step (counted) | CPU ms / step | × SGD CPU |",
        "|---|---|---|---|",
    ]
    for label in VARIANTS:
        cost = store["costs"].get(label)
        if cost is not None:
            passes = cost.get("passes_per_step")
            shown = "" if passes is None else f"{passes:.2f}"
            lines.append(f"| {label} | {shown} | {cost['cpu_ms']:.1f} | {cost['x_sgd']:.2f} |")
    return "\n".join(lines)


def figure(store: dict[str, Any], path: Path = FIGURE) -> None:
    """Accuracy against cost, one panel per noise level, a point per measured variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(NOISES), figsize=(12, 5.2), sharey=False)
    labels: list[tuple[Any, str, float, float]] = []
    for ax, noise in zip(axes, NOISES, strict=True):
        rows = [row(label, noise, store) for label in VARIANTS]
        if not any(r["acc"] for r in rows):
            ax.text(0.5, 0.5, "nothing reported yet", ha="center", transform=ax.transAxes)
        for label, r in zip(VARIANTS, rows, strict=True):
            x = r["x_sgd"] if r["x_sgd"] is not None else r["passes"]
            if not r["acc"] or x is None:
                continue
            mean = statistics.mean(r["acc"])
            std = statistics.stdev(r["acc"]) if len(r["acc"]) > 1 else 0.0
            marker = {"SGD": "s", "SAM": "D"}.get(label, "o")
            ax.errorbar(x, mean, yerr=std, fmt=marker, capsize=3)
            seeds = f" ({len(r['acc'])})" if len(r["acc"]) < len(REPORT_SEEDS) else ""
            labels.append((ax, label + seeds, x, mean))
        ax.set_xlim(0.9, 2.2)  # SGD's price to SAM's and a little beyond, on both panels
        partial = any(0 < len(r["acc"]) < len(REPORT_SEEDS) for r in rows)
        ax.set_title(f"{noise:.0%} label noise" + (" (partial: seeds in brackets)" * partial))
        ax.set_xlabel("× SGD CPU time per step (passes/step where not timed)")
        ax.set_ylabel("clean test top-1 (%), mean ± std")
        ax.grid(alpha=0.3)
    fig.tight_layout()  # before the labels: their places are measured on the final axes
    for ax in axes:
        _label_points(ax, [(text, x, y) for owner, text, x, y in labels if owner is ax])
    fig.savefig(path, dpi=110)
    plt.close(fig)


#: Label offsets tried in turn (points): beside the point, then further down or up, then the
#: same on its left; the variants near 2x would stack their labels otherwise.
_LABEL_OFFSETS = [(side * 5, sign * step) for side in (1, -1) for step in range(0, 90, 10)
                  for sign in ((1,) if step == 0 else (-1, 1))]  # fmt: skip


def _label_points(ax: Any, points: list[tuple[str, float, float]]) -> None:
    """Each point's label at the first offset where it covers no point and no label placed
    before, inside the axes; a label moved off its point gets a thin leader line."""
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    marker = 3.5 * ax.figure.dpi / 72  # half a marker (6 pt), in pixels: labels keep off it
    centres = [ax.transData.transform((x, y)) for _, x, y in points]
    placed = [Bbox.from_extents(cx - marker, cy - marker, cx + marker, cy + marker)
              for cx, cy in centres]  # fmt: skip
    for text, x, y in sorted(points, key=lambda point: -point[2]):
        for tries, (dx, dy) in enumerate([*_LABEL_OFFSETS, (5, 0)], 1):  # last: nowhere free
            style = {"textcoords": "offset points", "fontsize": 8, "va": "center"}
            note = ax.annotate(text, (x, y), xytext=(dx, dy), ha="left" if dx > 0 else "right",
                               **style)  # fmt: skip
            box = note.get_window_extent(renderer)  # the text's: a leader line would add to it
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
            free = inside and not any(box.overlaps(other) for other in placed)
            if free or tries > len(_LABEL_OFFSETS):  # nowhere free: beside it, overlapping
                placed.append(box)
                break
            note.remove()
        if dy:
            note.remove()
            leader = {"arrowstyle": "-", "lw": 0.5, "color": "0.5"}
            ax.annotate(text, (x, y), xytext=(dx, dy), ha="left" if dx > 0 else "right",
                        arrowprops=leader, **style)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "costs", "table"))
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "efficiency")
    parser.add_argument("--budget-min", type=float, default=1e9, help="start no run after it")
    parser.add_argument("--reps", type=int, default=9, help="timing repetitions (costs)")
    parser.add_argument(
        "--no-fork", action="store_true", help="each run in a new interpreter (run)"
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args(argv)
    exit_on_problems("efficiency", [expect_folder(args.out, "a folder for runs", exists=False)])
    if args.action == "run":
        return run_all(args.out, 60 * args.budget_min, fork=not args.no_fork)
    if args.action == "costs":
        costs = measure_costs(args.variants, args.reps)  # each interleaved with SGD's
        with locked_store() as store:
            store["costs"].update(costs)
    store = read_store()
    print(table(store))
    print(cost_table(store))
    figure(store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
