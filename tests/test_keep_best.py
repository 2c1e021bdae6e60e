"""checkpoint.keep_best=K: the K best epochs by checkpoint.best_metric, kept across a resume;
checked against the epochs' own rows in metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from conftest import run_in_process

from sam_train.checkpoint import GLOBAL_STEP, RUN_STATE, load_checkpoint

BASE = [
    "experiment=quickstart",
    "sam=none",
    "dataset.test_fraction=0.75",
    "scheduler.warmup_epochs=1",
    "logger=none",
    "checkpoint.keep_best=2",
]


def _expected(run: Path, column: str, lower: bool) -> list[int]:
    """The steps of the two best epochs in metrics.csv (a tie: the earlier epoch)."""
    with (run / "metrics.csv").open(newline="") as file:
        rows = [(float(r[column]), int(r["step"])) for r in csv.DictReader(file)]
    return [step for _, step in sorted(rows, key=lambda r: r[0] if lower else -r[0])[:2]]


def _kept(run: Path) -> list[int]:
    return sorted(int(p.stem.split("_")[-1]) for p in (run / "checkpoints").glob("best_step_*"))


@pytest.mark.parametrize(
    ("metric", "column", "lower"),
    [("test/acc1", "test_acc1", False), ("test/loss", "test_loss", True)],
)
def test_keep_best_keeps_the_k_best_epochs_across_a_resume(tmp_path, metric, column, lower):
    run = tmp_path / "run"
    args = [*BASE, f"checkpoint.best_metric={metric}", f"hydra.run.dir={run}"]
    code, err = run_in_process([*args, "trainer.epochs=2"])
    assert code == 0, err
    assert _kept(run) == sorted(_expected(run, column, lower))
    stray = run / "checkpoints" / "best_step_999999999.pt"  # a dead session's, after last.pt
    stray.write_bytes((run / "checkpoints" / "last.pt").read_bytes())
    code, err = run_in_process([*args, "trainer.epochs=4", "resume=auto"])
    assert code == 0, err
    expected = _expected(run, column, lower)
    assert _kept(run) == sorted(expected) and not stray.exists()
    for step in expected:
        state = load_checkpoint(run / "checkpoints" / f"best_step_{step:09d}.pt")
        assert state[GLOBAL_STEP] == step
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best[GLOBAL_STEP] == expected[0]  # best.pt is the first of them
    assert best[RUN_STATE]["best"]["epoch"] + 1 == expected[0] // 7


def test_without_keep_best_no_such_file(tmp_path):
    run = tmp_path / "run"
    code, err = run_in_process([*BASE[:-1], "trainer.epochs=1", f"hydra.run.dir={run}"])
    assert code == 0, err
    assert _kept(run) == [] and (run / "checkpoints" / "best.pt").is_file()
