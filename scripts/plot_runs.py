"""Draw test-accuracy curves of sam-train runs from their metrics.csv into a PNG.

    python scripts/plot_runs.py multirun/noisy_digits/*/ --out docs/noisy_digits.png

One panel per setting (the paper row a run reproduces, see ``sam_train/paper.py``), one colour
per optimizer (SGD, SAM with its rho): a thin line per run (seed) and a thick line for their
mean. ``--column`` picks another column of metrics.csv (``test_loss``, ``train_acc1``,
``test_ema_acc1``, ...). The x axis is the epoch. A short run (a few epochs) has a marker on
each point; a run stopped before its configured epochs ends in a cross.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sam_train.errors import ArgumentParser  # noqa: E402
from sam_train.paths import exit_on_problems, expect_folder, expect_new_file  # noqa: E402
from sam_train.run_curves import Curve, collect, plot, read_curve  # noqa: E402

__all__ = ["Curve", "collect", "main", "plot", "read_curve"]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    parser.add_argument("--column", default="test_acc1", help="metrics.csv column")
    parser.add_argument("--title", default="", help="figure title")
    args = parser.parse_args(argv)
    exit_on_problems(
        "plot_runs",
        [
            *(expect_folder(p, "a run folder") for p in args.run_dirs),
            expect_new_file(args.out, "the PNG file to write (--out)"),
        ],
    )
    curves = collect(args.run_dirs, args.column)
    if not curves:
        print(
            f"plot_runs: error: no run among the given folders has {args.column}", file=sys.stderr
        )
        return 2
    plot(curves, args.out, args.column, args.title)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
