"""Sweep folders a user can rely on: a re-run keeps the first sweep's record, job folders can
be passed back to sam-train as written, and a search whose every trial fails says so in one
line with the list of failed jobs. Jobs here fail at validation (no training) or train
digits for one short epoch, in this process."""

from __future__ import annotations

import importlib.util

import pytest
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


def test_a_job_folder_named_the_old_way_is_given_back_as_written(tmp_path):
    """``<sweep>/experiment=quickstart,sam=none,trainer.epochs=1``: trained into, resumed
    (complete: nothing to do) and fine-tuned from, each path passed as sam-train printed it."""
    job = tmp_path / "sweep" / "experiment=quickstart,sam=none,trainer.epochs=1"
    quick = ["experiment=quickstart", "sam=none", "trainer.epochs=1", "logger=none"]
    code, err = run_in_process([*quick, f"hydra.run.dir={job}"])
    assert code == 0, err
    assert (job / "checkpoints" / "last.pt").is_file()
    code, err = run_in_process([*quick, "resume=auto", f"hydra.run.dir={job}"])
    assert code == 0, err
    finetuned = tmp_path / "finetuned"
    init = f"model.init_from={job}/checkpoints/last.pt"
    code, err = run_in_process([*quick, init, f"hydra.run.dir={finetuned}"])
    assert code == 0, err
    assert (finetuned / "results.json").is_file()


def test_a_comma_in_a_path_is_a_sweep_only_in_a_multirun():
    from sam_train.paths import quote_path_overrides

    args = ["resume=a,b", "seed=1,2", "hydra.run.dir=x=y"]
    assert quote_path_overrides(args, multirun=False) == [
        "resume='a,b'",
        "seed=1,2",
        "hydra.run.dir='x=y'",
    ]
    assert quote_path_overrides(args, multirun=True) == [
        "resume=a,b",
        "seed=1,2",
        "hydra.run.dir='x=y'",
    ]


def test_an_optuna_search_whose_every_trial_fails_lists_them_without_a_traceback(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper is not installed (uv sync --extra optuna)")
    sweep = f"hydra.sweep.dir={tmp_path / 'search'}"
    args = ["-m", *REFUSED, "hparams_search=optuna", "hydra.sweeper.n_trials=2", sweep]
    code, err = run_in_process(args)
    assert code == 1, err
    assert "Traceback" not in err and "ValueError" not in err
    lines = err.strip().splitlines()
    assert "sam-train: error: no trial of the search completed: there is no best trial" in lines
    assert "sam-train: 2 job(s) of the sweep failed:" in lines
    assert lines[-2].startswith("  #0 ") and lines[-1].startswith("  #1 ")
