"""Sweep folders a user can rely on: a re-run keeps the first sweep's record, job folders can
be passed back to sam-train as written, and a search whose every trial fails says so in one
line with the list of failed jobs. Jobs here fail at validation (no training) or train
digits for one short epoch, in this process."""

from __future__ import annotations

from pathlib import Path

from conftest import run_in_process
from omegaconf import OmegaConf

# Every job refused by validation before any work: a sweep of them costs no training.
REFUSED = ["experiment=quickstart", "trainer.epochs=0"]


def test_a_rerun_sweep_keeps_the_first_sweeps_record(tmp_path):
    sweep = tmp_path / "sweep"
    records = []
    for seeds in ("1,2", "3,4", "5"):
        code, err = run_in_process(["-m", *REFUSED, f"seed={seeds}", f"hydra.sweep.dir={sweep}"])
        assert code == 1, err  # every job failed, and the sweep said so
        records.append(OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task)
    assert [list(r) for r in records] == [[*REFUSED, f"seed={s}"] for s in ("1,2", "3,4", "5")]
    kept = [OmegaConf.load(sweep / f"multirun.{n}.yaml").hydra.overrides.task for n in (1, 2)]
    assert [list(r) for r in kept] == [list(r) for r in records[:2]]
    assert sorted(p.name for p in sweep.glob("multirun*.yaml")) == [
        "multirun.1.yaml",
        "multirun.2.yaml",
        "multirun.yaml",
    ]
