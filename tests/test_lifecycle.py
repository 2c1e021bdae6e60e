"""A run folder belongs to one run, resumes never silently change a run, stops always leave
a checkpoint, and a sweep survives a failed job. Every test runs the real entry point
(``sam_train.cli.main``) in this process; ``test_resume.py`` has the real-process kills."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from conftest import QUICK, compose_config, run_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sam_train.train as train_module
from sam_train.build import build_scheduler
from sam_train.callbacks import Callback
from sam_train.callbacks.tensorboard import tensorboard_tag
from sam_train.run_folder import RunLock

# 21 steps of 64 digits per epoch; dropout and label noise make the run depend on every
# random draw being restored.
STEPS = 21
BASE = [
    *QUICK,
    "trainer.log_every=7",
    "model.kwargs.drop_rate=0.2",
    "dataset.label_noise=0.2",
]


def _files(run: Path) -> dict[str, bytes]:
    """Every file of a run folder but its log and lock, by relative path."""
    skip = {"train.log", ".lock"}
    return {
        str(p.relative_to(run)): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _last(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=False)


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


class _Act(Callback):
    """Does ``action()`` once, after optimizer step ``at`` (a signal, a crash)."""

    def __init__(self, at: int, action) -> None:
        self.at, self.action, self.done = at, action, False

    def on_train_step_end(self, trainer, state, output) -> None:
        if state.global_step == self.at and not self.done:
            self.done = True
            self.action()


@pytest.fixture
def inject(monkeypatch):
    """Add a callback to the next runs' callbacks (after the built-in ones)."""

    def add(callback: Callback) -> None:
        original = train_module.build_callbacks

        def with_extra(*args, **kwargs):
            return [*original(*args, **kwargs), callback]

        monkeypatch.setattr(train_module, "build_callbacks", with_extra)

    return add


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A complete 2-epoch run, trained once for the tests that resume or re-enter it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    code, err = run_in_process([*BASE, f"hydra.run.dir={run}"])
    assert code == 0, err
    return run


def _copy_run(source: Path, target: Path) -> Path:
    import shutil

    shutil.copytree(source, target)
    return target


# ----------------------------------------------------------------------------- one folder, one run
def test_a_second_run_into_a_locked_folder_is_refused(cli_in_process, tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        code, err = cli_in_process([*BASE, f"hydra.run.dir={run}"])
    assert code == 2 and "is in use by another sam-train run" in err
    assert "Traceback" not in err and not (run / "checkpoints").exists()


@pytest.mark.parametrize("artifact", ["checkpoints/best.pt", "checkpoints/step_000000005.pt"])
def test_a_folder_with_any_artifact_is_never_overwritten(cli_in_process, tmp_path, artifact):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / artifact).write_bytes(b"precious")
    (run / "results.json").write_text("{}")
    before = _files(run)
    code, err = cli_in_process([*BASE, f"hydra.run.dir={run}"])
    assert code == 2 and "already holds a run" in err and "Traceback" not in err
    assert _files(run) == before


def test_resume_from_another_runs_file_into_a_finished_folder_is_refused(
    cli_in_process, finished, tmp_path
):
    target = _copy_run(finished, tmp_path / "target")
    before = _files(target)
    other = finished / "checkpoints" / "last.pt"
    code, err = cli_in_process([*BASE, f"resume={other}", f"hydra.run.dir={target}"])
    assert code == 2 and "is not this folder's checkpoint" in err
    assert _files(target) == before


def test_resume_auto_on_a_complete_run_leaves_it_untouched(
    cli_in_process, finished, tmp_path, capsys
):
    run = _copy_run(finished, tmp_path / "run")
    before, log = _files(run), (run / "train.log").read_bytes()
    code, err = cli_in_process([*BASE, "resume=auto", f"hydra.run.dir={run}"])
    assert code == 0, err
    assert _files(run) == before, "a complete run must not be rewritten"
    assert (run / "train.log").read_bytes() == log, "train.log appended to"  # issue 25
    assert "is complete" in capsys.readouterr().out  # said on the console only
    results = json.loads((run / "results.json").read_text())  # strict JSON, no NaN
    assert results["epochs_run"] == 2 and results["images_per_sec"] > 0


# ----------------------------------------------------------------------------- config on resume
def _lr_scalars(run: Path) -> dict[int, float]:
    events = EventAccumulator(str(run))
    events.Reload()
    return {event.step: event.value for event in events.Scalars(tensorboard_tag("lr"))}


def test_growing_epochs_rebuilds_the_schedule(cli_in_process, finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    code, err = cli_in_process([*BASE, "trainer.epochs=3", "resume=auto", f"hydra.run.dir={run}"])
    assert code == 0, err
    assert "trainer.epochs grew from 2 to 3" in (run / "train.log").read_text()
    lrs = _lr_scalars(run)
    schedule = build_scheduler(
        torch.optim.SGD([torch.zeros(1)], lr=0.05),
        compose_config([*BASE, "trainer.epochs=3"]).scheduler,
        epochs=3,
        updates_per_epoch=STEPS,
    )
    for step in (49, 56):  # logged after the update: the lr of the next step
        assert lrs[step] > 0
        assert lrs[step] == pytest.approx(schedule._get_lr(step)[0], rel=1e-6)
    assert _last(run)["global_step"] == 3 * STEPS


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.batch_size=32", "trainer.batch_size"),
        ("optimizer=adamw", "optimizer.name"),
        ("sam=gsam", "sam.name"),
        ("seed=3", "seed"),
        ("scheduler=multistep", "scheduler.name"),
    ],
)
def test_a_resume_that_changes_the_trajectory_is_refused(
    cli_in_process, finished, tmp_path, override, key
):
    run = _copy_run(finished, tmp_path / "run")
    before = _files(run)
    code, err = cli_in_process(
        [*BASE, override, "trainer.epochs=3", "resume=auto", f"hydra.run.dir={run}"]
    )
    assert code == 2 and "would change the run" in err and f"{key}:" in err, err
    assert "Traceback" not in err and _files(run) == before


def test_a_checkpoint_older_than_an_option_resumes_with_its_default(
    cli_in_process, finished, tmp_path
):
    run = _copy_run(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    checkpoint = torch.load(last, weights_only=False)
    del checkpoint["config"]["sam"]["adaptive_params"]  # written before the option existed
    torch.save(checkpoint, last)
    code, err = cli_in_process([*BASE, "trainer.epochs=3", "resume=auto", f"hydra.run.dir={run}"])
    assert code == 0, err
    assert _last(run)["global_step"] == 3 * STEPS


def test_resume_strict_false_accepts_another_optimizer(cli_in_process, finished, tmp_path):
    run = _copy_run(finished, tmp_path / "run")
    args = ["optimizer=adamw", "trainer.epochs=3", "resume=auto", "resume_strict=false"]
    code, err = cli_in_process([*BASE, *args, f"hydra.run.dir={run}"])
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert "resuming with a changed config" in log and "starting it fresh" in log
    assert _last(run)["global_step"] == 3 * STEPS


# ----------------------------------------------------------------------------- stops
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 75), (signal.SIGINT, 130)])
def test_a_stop_checkpoints_even_without_save_last_and_resumes_exactly(
    cli_in_process, inject, finished, tmp_path, sig, code
):
    run = tmp_path / "run"
    inject(_Act(30, lambda: os.kill(os.getpid(), sig)))
    args = [*BASE, "checkpoint.save_last=false", f"hydra.run.dir={run}"]
    exit_code, err = cli_in_process(args)
    assert exit_code == code, err
    # The signal lands after step 30's stop check: the run stops after the next step.
    assert f"stopped by {signal.Signals(sig).name} at step 31" in err and "Traceback" not in err
    assert _last(run)["global_step"] == 31
    assert (run / "checkpoints" / "best.pt").is_file(), "best.pt does not need save_last"
    exit_code, err = cli_in_process([*args, "resume=auto"])
    assert exit_code == 0, err
    assert "at step 31" in (run / "train.log").read_text()
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    finished_best = torch.load(finished / "checkpoints" / "best.pt", weights_only=False)
    assert best["global_step"] == finished_best["global_step"]
    _assert_same_weights(best["model"], finished_best["model"])


def test_a_stop_at_an_epochs_last_step_evaluates_that_epoch_first(
    cli_in_process, inject, finished, tmp_path
):
    run = tmp_path / "run"
    inject(_Act(STEPS - 1, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    code, err = cli_in_process([*BASE, f"hydra.run.dir={run}"])
    assert code == 75 and f"at step {STEPS}" in err, err
    state = _last(run)["run_state"]
    assert state["global_step"] == STEPS and state["test_metrics"]["count"] == 450
    assert "epoch 1/2  train loss" in (run / "train.log").read_text()
    assert cli_in_process([*BASE, "resume=auto", f"hydra.run.dir={run}"])[0] == 0
    _assert_same_weights(_last(run)["model"], _last(finished)["model"])  # buffers included


def test_a_second_ctrl_c_exits_at_once(cli_in_process, inject, tmp_path):
    run = tmp_path / "run"

    def twice() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    inject(_Act(5, twice))
    code, err = cli_in_process([*BASE, f"hydra.run.dir={run}"])
    assert code == 130 and "second Ctrl-C" in err and "Traceback" not in err
    assert not (run / "checkpoints" / "last.pt").exists()


def test_a_crash_resumes_exactly_and_falls_back_past_a_damaged_last_pt(
    cli_in_process, inject, finished, tmp_path
):
    run = tmp_path / "run"

    def crash() -> None:
        raise RuntimeError("simulated crash")

    inject(_Act(33, crash))
    args = [*BASE, "checkpoint.every_n_steps=4", "checkpoint.keep_last=2", f"hydra.run.dir={run}"]
    code, err = cli_in_process(args)  # Hydra reports the exception and exits 1
    assert code == 1 and "simulated crash" in err
    assert _last(run)["global_step"] == 32
    (run / "checkpoints" / "last.pt").write_bytes(b"torn")  # a disk error after the save
    code, err = cli_in_process([*args, "resume=auto"])
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert "skipped last.pt" in log and "step_000000032.pt" in log
    _assert_same_weights(_last(run)["model"], _last(finished)["model"])


# ----------------------------------------------------------------------------- sweeps
def test_a_sweep_goes_on_after_a_failed_job_and_reports_it(cli_in_process, tmp_path):
    sweep = tmp_path / "sweep"
    code, err = cli_in_process(
        ["-m", *BASE, "trainer.epochs=1", "sam.rho=-1,0.05", f"hydra.sweep.dir={sweep}"]
    )
    assert code == 1
    assert "1 job(s) of the sweep failed" in err and "#0 " in err and "sam.rho" in err
    (failed,) = sweep.glob("*sam.rho=-1*")  # job folders are named by their overrides
    (done,) = sweep.glob("*sam.rho=0.05*")
    assert json.loads((done / "results.json").read_text())["epochs"] == 1
    assert not (failed / "results.json").exists()


def test_rerunning_a_sweep_into_its_folder_overwrites_nothing(cli_in_process, tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    assert cli_in_process(args)[0] == 0
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [f"seed={seed}" in job.name.split(",") for seed, job in enumerate(jobs)] == [True, True]
    before = {job: _files(job) for job in jobs}
    code, err = cli_in_process(args)
    assert code == 1 and "2 job(s) of the sweep failed" in err and "already holds a run" in err
    assert {job: _files(job) for job in jobs} == before


def test_an_unwritable_sweep_folder_is_one_line(cli_in_process, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, err = cli_in_process(["-m", *BASE, "seed=0,1", f"hydra.sweep.dir={blocker}/sweep"])
    assert code == 2 and "hydra.sweep.dir" in err and "not writable" in err
    assert "Traceback" not in err
