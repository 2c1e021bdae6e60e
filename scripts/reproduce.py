"""Launch one of the SAM paper's tables as a Hydra multirun of ``sam-train``.

    python scripts/reproduce.py cifar10                       # Table 1, CIFAR-10 columns, 5 seeds
    python scripts/reproduce.py noisy_digits                  # the CPU-sized label-noise table
    python scripts/reproduce.py cifar100 --launcher slurm hydra.launcher.partition=gpu \\
        hydra.launcher.gpus_per_node=1 hydra.launcher.timeout_min=4320
    python scripts/reproduce.py label_noise --dry-run         # print the command only
    python scripts/reproduce.py finetune --dry-run            # Table 3: 16 settings x 2, 5 seeds
    python scripts/reproduce.py vit --seeds 1                 # Chen et al.'s ViT-S/16, ViT-B/16

Each table is a grid: its presets in ``configs/experiment/paper/`` (SAM and the baseline of every
row: SGD, or AdamW for the ViTs), times the swept options (CIFAR:
``augment=basic,cutout,autoaugment``), times the seeds.
Extra ``key=value`` arguments are passed to every run; one that names a swept key replaces the
sweep (``augment=cutout`` runs the cutout column only). ``--launcher slurm`` uses Hydra's submitit
launcher (``pip install 'sam-train[slurm]'``); its ``hydra.launcher.*`` options go in the extras.
Then ``python scripts/paper_table.py --seeds OUT/*/`` sets the results beside the paper's.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sam_train.cli import checked_arguments
from sam_train.errors import ArgumentParser, ConfigError
from sam_train.paths import exit_on_problems, expect_folder

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "experiment"


@dataclass(frozen=True)
class Grid:
    presets: str  # glob under configs/experiment/
    seeds: int
    sweeps: dict[str, str] = field(default_factory=dict)
    description: str = ""


CIFAR_AUGMENT = {"augment": "basic,cutout,autoaugment"}
TABLES = {
    "cifar10": Grid("paper/cifar10/*.yaml", 5, CIFAR_AUGMENT, "Table 1, CIFAR-10"),
    "cifar100": Grid("paper/cifar100/*.yaml", 5, CIFAR_AUGMENT, "Table 1, CIFAR-100"),
    "imagenet": Grid("paper/imagenet/*.yaml", 5, {}, "Table 2, ImageNet ResNets"),
    "finetune": Grid("paper/finetune/*.yaml", 5, {}, "Table 3, fine-tuning EfficientNets"),
    "vit": Grid("paper/vit/*.yaml", 1, {}, "Chen et al. 2022, ViTs from scratch on ImageNet"),
    "label_noise": Grid("paper/label_noise/*.yaml", 5, {}, "Table 4, noisy CIFAR-10 labels"),
    "noisy_digits": Grid(
        "paper/noisy_digits*.yaml",
        3,
        {"dataset.label_noise": "0.2,0.4,0.6"},
        "Table 4 scaled to scikit-learn's digits (CPU, minutes)",
    ),
}


def presets(grid: Grid) -> list[str]:
    """Preset names (``paper/cifar10/wrn28_10_200ep``) matched by the grid's glob, sorted."""
    return sorted(str(p.relative_to(PRESETS).with_suffix("")) for p in PRESETS.glob(grid.presets))


def build_command(
    table: str,
    *,
    seeds: int | None = None,
    launcher: str = "local",
    out: str | None = None,
    extra: list[str] | None = None,
) -> list[str]:
    """The ``sam-train -m ...`` command line for a table's grid."""
    grid = TABLES[table]
    extra = list(extra or [])
    overridden = {arg.split("=", 1)[0].lstrip("+~") for arg in extra if "=" in arg}
    sweeps = {"experiment": ",".join(presets(grid)), **grid.sweeps}
    sweeps["seed"] = ",".join(str(s) for s in range(seeds if seeds is not None else grid.seeds))
    out = out or f"multirun/paper_{table}/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    command = [sys.executable, "-m", "sam_train", "-m"]
    command += [f"{key}={values}" for key, values in sweeps.items() if key not in overridden]
    command += [f"hydra.sweep.dir={out}", "hydra.sweep.subdir=${hydra.job.num}_${run_name}"]
    if launcher == "slurm":
        command.append("hydra/launcher=submitit_slurm")
    return command + extra


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="tables: " + "; ".join(f"{k} ({g.description})" for k, g in TABLES.items()),
    )
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--seeds", type=int, help="seeds 0..N-1 (default: the table's)")
    parser.add_argument("--launcher", choices=("local", "slurm"), default="local")
    parser.add_argument("--out", help="sweep folder (default multirun/paper_TABLE/DATE_TIME)")
    parser.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    parser.add_argument("overrides", nargs="*", help="key=value passed to every run")
    args = parser.parse_intermixed_args(argv)
    if args.out is not None:
        exit_on_problems("reproduce", [expect_folder(args.out, "a sweep folder", exists=False)])

    if args.launcher == "slurm" and not args.dry_run:
        try:
            import hydra_plugins.hydra_submitit_launcher  # noqa: F401
        except ImportError:
            parser.error(
                "--launcher slurm needs hydra-submitit-launcher: pip install 'sam-train[slurm]'"
            )
    command = build_command(
        args.table, seeds=args.seeds, launcher=args.launcher, out=args.out, extra=args.overrides
    )
    try:  # sam-train's own check (a typo's "did you mean"), before anything is printed or run
        checked_arguments(command[command.index("sam_train") + 1 :])
    except ConfigError as err:
        exit_on_problems("reproduce", [str(err)])
    print(shlex.join(command), flush=True)
    if args.dry_run:
        return 0
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    return subprocess.call(command, env=env)


if __name__ == "__main__":
    sys.exit(main())
