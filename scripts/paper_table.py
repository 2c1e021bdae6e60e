"""Set finished runs beside the SAM paper's published numbers, as markdown tables.

    python scripts/paper_table.py multirun/noisy_digits/*/            # one row per run
    python scripts/paper_table.py --seeds multirun/noisy_digits/*/    # mean ± std over seeds

Each RUN_DIR is a sam-train run folder: its ``results.json`` gives the test accuracy and its
``.hydra/config.yaml`` the setting (data set, model, epochs, augmentation, label noise, pretrained
weights, SAM or its baseline), which picks the paper's row from ``sam_train/paper_results.yaml``:
the SAM paper's Tables 1-4 (baseline SGD) and Chen et al. 2022's ViTs (baseline AdamW). Values
are in the paper's unit (test error for Tables 1-3, accuracy for Table 4 and the ViTs);
"difference" is this run minus the paper's value for the same optimizer; with ``--seeds``,
"this run − SGD" (or − adamw) is the mean's gap to the baseline runs of the same setting.
Folders without results.json are skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sam_train.config import register_resolvers  # noqa: E402
from sam_train.errors import ArgumentParser  # noqa: E402
from sam_train.paper import TABLE_TITLES, Setting, describe, optimizer_family, optimizer_label  # noqa: E402
from sam_train.paths import exit_on_problems, expect_folder  # noqa: E402
from sam_train.run_folder import RUN_MARKER, unstarted_jobs_problem  # noqa: E402


@dataclass
class Run:
    path: Path
    setting: Setting
    family: str  # SGD, SAM, adamw, SAM (adamw), ...: which paper column applies
    optimizer: str  # the family with rho: the grouping label
    seed: int
    value: float  # in the setting's metric


def load_run(path: Path, metric: str = "final") -> Run | None:
    """A finished run folder, or None (with a note on stderr) when it has no results yet."""
    results_file, config_file = path / "results.json", path / RUN_MARKER
    if not results_file.is_file() or not config_file.is_file():
        why = unstarted_jobs_problem(path) or f"{path}: no results.json or {RUN_MARKER}"
        print(f"paper_table: skipping {why}", file=sys.stderr)
        return None
    results = json.loads(results_file.read_text())
    cfg: Any = OmegaConf.to_container(OmegaConf.load(config_file), resolve=True)
    setting = describe(cfg)
    accuracy = results["final_acc1"] if metric == "final" else results["best_acc1"]
    return Run(
        path,
        setting,
        optimizer_family(cfg),
        optimizer_label(cfg),
        int(cfg["seed"]),
        setting.value(accuracy),
    )


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _cells(members: list[Run], seeds: bool, baseline_means: dict[str, float]) -> list[str]:
    """One table row: a run, or (``seeds``) a setting and optimizer over its seeds."""
    first = members[0]
    values = [m.value for m in members]
    mean = statistics.fmean(values)
    paper = first.setting.paper(first.family)
    measured = f"{mean:.2f}"
    if seeds and len(values) > 1:
        measured += f" ± {statistics.stdev(values):.2f}"
    cells = [first.setting.label, first.optimizer]
    if seeds:
        cells.append(",".join(str(m.seed) for m in sorted(members, key=lambda m: m.seed)))
    else:
        cells += [str(first.seed), first.path.name]
    cells += [
        str(first.setting.baseline) if first.setting.baseline else "—",
        str(first.setting.sam) if first.setting.sam else "—",
        measured,
        "—" if paper is None else f"{mean - paper.mean:+.2f}",
    ]
    if seeds:
        base = baseline_means.get(first.setting.label)
        is_base = first.family == first.setting.baseline_name
        cells.append("—" if base is None or is_base else f"{mean - base:+.2f}")
    return cells


def render(runs: list[Run], *, seeds: bool) -> str:
    """One markdown table per paper table; rows per run, or per setting and optimizer."""
    by_table: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_table[run.setting.table].append(run)
    blocks = []
    for table in sorted(by_table, key=list(TABLE_TITLES).index):
        rows = sorted(
            by_table[table],
            key=lambda r: (
                r.setting.order,
                r.setting.label,
                r.family != r.setting.baseline_name,
                r.optimizer,
                r.seed,
            ),
        )
        baseline = rows[0].setting.baseline_name  # one per table: SGD, or adamw for the ViTs
        head = ["setting", "optimizer"] + (["seeds"] if seeds else ["seed", "run"])
        head += [
            f"paper {baseline}",
            "paper SAM",
            "this run" + (" (mean ± std)" if seeds else ""),
            "difference",
        ]
        if seeds:
            head.append(f"this run − {baseline}")
        lines = [f"**{TABLE_TITLES[table]}**", "", _row(head), _row(["---"] * len(head))]
        groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for run in rows:
            groups[(run.setting.label, run.optimizer) if seeds else (str(run.path), "")].append(run)
        baseline_means = {
            label: statistics.fmean(m.value for m in members)
            for (label, _), members in groups.items()
            if seeds and members[0].family == members[0].setting.baseline_name
        }
        lines += [_row(_cells(members, seeds, baseline_means)) for members in groups.values()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--seeds", action="store_true", help="group runs over seeds: mean ± std")
    parser.add_argument(
        "--metric",
        choices=("final", "best"),
        default="final",
        help="the last epoch's test accuracy (default) or the best epoch's",
    )
    args = parser.parse_args(argv)
    exit_on_problems("paper_table", (expect_folder(p, "a run folder") for p in args.run_dirs))
    register_resolvers()
    runs = [run for path in args.run_dirs if (run := load_run(path, args.metric)) is not None]
    if not runs:
        print("paper_table: error: no finished runs among the given folders", file=sys.stderr)
        return 2
    print(render(runs, seeds=args.seeds), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
