"""The efficiency frontier: which SAM variant keeps SAM's gain on noisy labels, at what cost.

    python scripts/efficiency.py                      # train what is missing, then the table
    python scripts/efficiency.py --seeds 1 --out runs/efficiency_quick
    python scripts/efficiency.py --table-only         # the table from the runs already there

Every variant trains ``experiment=paper/noisy_digits`` (scikit-learn's digits, 40% symmetric
label noise, rho 0.5 for every variant) over the seeds, as a ``sam-train -m`` sweep per variant
whose jobs resume (``resume=auto``), so an interrupted table continues where it stopped. The
cost columns are measured on the same runs' first batches, built by ``build.build_run``:
forward-backward passes per step counted by a forward hook, and the step's CPU time, both
over whole cycles of 10 steps (LookSAM's and the interval's k divide 10), interleaved with
SGD's (one thread: CPU time is the step's work even on a shared machine, where wall times
of whole runs are not comparable). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import bench_run, compose, median_ratio, time_interleaved, train_step

from sam_train.paths import exit_on_problems, expect_folder

PRESET = "experiment=paper/noisy_digits"
#: label -> the overrides that select the variant (on top of the preset's rho 0.5).
VARIANTS: dict[str, list[str]] = {
    "SGD": ["sam=none"],
    "SAM": ["sam=sam"],
    "LookSAM k=5": ["sam=looksam", "sam.k=5"],
    "interval k=2": ["sam=interval", "sam.k=2"],
    "interval k=5": ["sam=interval", "sam.k=5"],
    "GSAM": ["sam=gsam"],
    "ASAM": ["sam=asam"],
    "F-SAM": ["sam=fsam"],
    "ESAM beta=0.5": ["sam=sam", "sam.perturb_fraction=0.5"],
}
CYCLE = 10  # steps timed and counted together: a multiple of every k above


def slug(label: str) -> str:
    return label.lower().replace(" ", "_").replace("=", "").replace(".", "")


def train_variant(label: str, seeds: int, out: Path, extra: list[str]) -> int:
    """``sam-train -m`` over the seeds; finished jobs are resumed as no-ops."""
    command = [
        sys.executable,
        "-m",
        "sam_train",
        "-m",
        PRESET,
        *VARIANTS[label],
        f"seed={','.join(str(s) for s in range(seeds))}",
        "resume=auto",
        f"hydra.sweep.dir={out / slug(label)}",
        "hydra.sweep.subdir=seed${seed}",
        *extra,
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command, env={**os.environ, "OMP_NUM_THREADS": "1"})


def accuracies(label: str, out: Path) -> list[float]:
    """Final clean test top-1 of the variant's finished runs."""
    paths = sorted((out / slug(label)).glob("seed*/results.json"))
    return [json.loads(path.read_text())["final_acc1"] for path in paths]


def cost(labels: list[str], reps: int) -> dict[str, tuple[float, float, float]]:
    """label -> (passes per step, CPU ms per step, CPU time relative to SGD)."""
    torch.set_num_threads(1)
    cycles, passes = {}, {}
    for label in labels:
        run = bench_run(compose([PRESET, *VARIANTS[label], "trainer.num_workers=0"]))
        images, targets = next(iter(run.loaders.train))
        calls = [0]
        hook = run.model.register_forward_pre_hook(
            lambda module, args, calls=calls: calls.__setitem__(0, calls[0] + module.training)
        )
        step = train_step(run, images, targets)
        for _ in range(CYCLE):
            step()
        hook.remove()
        passes[label] = calls[0] / CYCLE
        cycles[label] = lambda step=step: [step() for _ in range(CYCLE)]
    timings = time_interleaved(cycles, device=torch.device("cpu"), warmup=1, reps=reps)
    base = "SGD" if "SGD" in labels else labels[0]
    return {
        label: (
            passes[label],
            1e3 * statistics.median(timings.cpu[label]) / CYCLE,
            median_ratio(timings.cpu[label], timings.cpu[base]),
        )
        for label in labels
    }


def table(labels: list[str], out: Path, reps: int) -> str:
    costs = cost(labels, reps)
    rows = [
        "| variant | passes / step | CPU ms / step | × SGD | clean test top-1 (%) | seeds |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        acc = accuracies(label, out)
        spread = f" ± {statistics.stdev(acc):.1f}" if len(acc) > 1 else ""
        shown = f"{statistics.mean(acc):.1f}{spread}" if acc else "not run"
        passes, ms, ratio = costs[label]
        rows.append(f"| {label} | {passes:.2f} | {ms:.1f} | {ratio:.2f} | {shown} | {len(acc)} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("runs/efficiency"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--reps", type=int, default=9, help="timing repetitions per variant")
    parser.add_argument("--table-only", action="store_true", help="train nothing")
    parser.add_argument("overrides", nargs="*", help="key=value passed to every run")
    args = parser.parse_intermixed_args(argv)
    exit_on_problems("efficiency", [expect_folder(args.out, "a folder for runs", exists=False)])
    if not args.table_only:
        for label in args.variants:
            if train_variant(label, args.seeds, args.out, args.overrides):
                print(f"{label}: a run failed; its row shows the runs that finished", flush=True)
    print(table(args.variants, args.out, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
