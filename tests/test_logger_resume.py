"""Every logger's files after a SIGKILL and a resume hold exactly the rows an uninterrupted run
writes, each once. For the loggers that write from this process the kill is simulated: a
callback copies the run folder at the step of the "kill" (the files as a SIGKILL leaves them:
what the loggers flushed, not what they buffer), and the run goes on to the end as the
uninterrupted reference. The copy is then resumed with ``resume=auto``. W&B writes from its own
service process, so its test SIGKILLs a real process and the service
(``tests/sigkill_worker.py``, in a forked child).

Digits with SGD, 7 steps per epoch, 2 epochs; scalars every 3 steps (3, 6, 7, 10, 13, 14),
checkpoints every 6 (6, 7, 12, 14): killed after step 13, the copy resumes from step 12, and
step 10's scalars, logged after epoch 1's last flush, must be in it.

Up to the resume point every row is the uninterrupted run's, value included; after it the
same rows, each once (the training windows' averages after a resume cover the steps of this
session only, so their values are not compared; the test metrics are).
"""

from __future__ import annotations

import shutil
import signal
from collections import Counter
from pathlib import Path

import pytest
import sigkill_worker
from conftest import ForkedRun, run_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_outputs import BASE as OUTPUTS_BASE
from test_outputs import _needs, _rows, finished_wandb_logs

import sam_train.train as train_module
from sam_train.callbacks import Callback
from sam_train.callbacks.wandb_records import history, records

KILLED_AT = 13
RESUMED_AT = 12
BASE = [*OUTPUTS_BASE, "checkpoint.every_n_steps=6"]  # digits, SGD, 2 epochs, log every 3
#: Values that are measured, not computed: they differ between two sessions.
TIMINGS = ("seconds", "images_per_sec", "eta")


class CopyAtStep(Callback):
    """What a SIGKILL after ``step`` leaves on disk: a copy of the run folder then."""

    def __init__(self, step: int, run: Path, copy: Path) -> None:
        self.step, self.run, self.copy = step, run, copy

    def on_train_step_end(self, trainer, state, output) -> None:
        if state.global_step == self.step:
            shutil.copytree(self.run, self.copy, ignore=shutil.ignore_patterns(".lock"))


def _measured(name: str) -> bool:
    return any(part in name for part in TIMINGS)


def _comparable(step: int, name: str, value: object) -> tuple[int, str, object]:
    """A row as the two runs must share it: its value up to the resume point and for the
    test metrics; no measured time ever."""
    same = step <= RESUMED_AT or name.startswith(("test/", "best/", "final/acc"))
    return step, name, value if same and not _measured(name) else None


def _scalar_rows(run: Path) -> Counter:
    rows = _rows(run / "scalars.csv")
    return Counter(_comparable(int(r["step"]), r["name"], float(r["value"])) for r in rows)


def _tensorboard(run: Path) -> Counter:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    tags = events.Tags()["scalars"]
    return Counter(_comparable(e.step, tag, e.value) for tag in tags for e in events.Scalars(tag))


@pytest.fixture
def killed_and_resumed(monkeypatch, tmp_path):
    """``run(loggers)``: (the uninterrupted run, the killed copy after its resume)."""

    def run(loggers: str) -> tuple[Path, Path]:
        reference, copy = tmp_path / "reference", tmp_path / "killed"
        original = train_module.build_callbacks
        killer = CopyAtStep(KILLED_AT, reference, copy)
        with monkeypatch.context() as patch:
            patch.setattr(
                train_module, "build_callbacks", lambda *a, **k: [*original(*a, **k), killer]
            )
            code, err = run_in_process([*BASE, f"logger={loggers}", f"hydra.run.dir={reference}"])
        assert code == 0, err
        assert copy.is_dir()
        args = [*BASE, f"logger={loggers}", "resume=auto", f"hydra.run.dir={copy}"]
        code, err = run_in_process(args)
        assert code == 0, err
        return reference, copy

    return run


def test_csv_and_tensorboard_rows_survive_a_kill_and_are_written_once(killed_and_resumed):
    reference, resumed = killed_and_resumed("[csv,tensorboard]")
    expected = _scalar_rows(reference)
    assert max(expected.values()) == 1, "a row written twice by an uninterrupted run"
    assert any(step == 10 and name == "train/loss" for step, name, _ in expected)
    assert _scalar_rows(resumed) == expected
    assert _tensorboard(resumed) == _tensorboard(reference)
    columns = ("epoch", "step", "lr", "test_loss", "test_acc1")
    got, want = _rows(resumed / "metrics.csv"), _rows(reference / "metrics.csv")
    assert [[r[c] for c in columns] for r in got] == [[r[c] for c in columns] for r in want]


@pytest.mark.slow  # MLflow builds its SQLite schema (alembic migrations): seconds per store
def test_mlflow_points_survive_a_kill_and_are_stored_once(killed_and_resumed):
    _needs("mlflow")
    from mlflow.tracking import MlflowClient

    def points(run: Path) -> Counter:
        client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
        (found,) = client.search_runs([client.get_experiment_by_name("sam-train").experiment_id])
        names = list(found.data.metrics)
        history = [m for n in names for m in client.get_metric_history(found.info.run_id, n)]
        return Counter(_comparable(m.step, m.key, m.value) for m in history)

    reference, resumed = killed_and_resumed("mlflow")
    expected = points(reference)
    assert max(expected.values()) == 1
    assert points(resumed) == expected


@pytest.mark.slow  # a process SIGKILLed (12 s of imports, beside the reference) and 4 W&B sessions
def test_wandb_offline_rows_survive_a_real_sigkill_and_are_written_once(monkeypatch, tmp_path):
    """A process and wandb's service SIGKILLed right after the checkpoint of step 12: every row
    up to it is in the dead session's offline log (wandb's service had written none of them:
    it writes a row when the next step begins and its file every 15 s). Resumed from step 12,
    or from the snapshot of step 7 (past which the dead session holds step 10, which the
    resumed session must skip), the rows are the uninterrupted run's, each once."""
    _needs("wandb")
    for name, value in {"MODE": "offline", "SILENT": "true", "DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(f"WANDB_{name}", value)
    args = [*BASE, "logger=wandb", "checkpoint.keep_last=2"]
    killed, reference, older = tmp_path / "killed", tmp_path / "reference", tmp_path / "older"
    # a forked child of this process: a real process to kill, without 6 s of imports
    proc = ForkedRun(
        lambda: sigkill_worker.main(RESUMED_AT, [*args, f"hydra.run.dir={killed}"]), tmp_path
    )
    code, err = run_in_process([*args, f"hydra.run.dir={reference}"])  # while it runs
    assert code == 0, err
    output = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, output[-3000:]

    def rows(logs: list[Path]) -> Counter:
        return Counter(_comparable(*row) for log in logs for row in history(log))

    def row_steps(logs: list[Path]) -> list[int]:
        """The step of each W&B row (a step's scalars are one row, not one per event)."""
        found = (r for log in logs for r in records(log))
        return [r.history.step.num for r in found if r.WhichOneof("record_type") == "history"]

    expected = rows(finished_wandb_logs(reference))
    assert max(expected.values()) == 1 and any(step == 10 for step, _n, _v in expected)
    assert row_steps(finished_wandb_logs(reference)) == [3, 6, 7, 10, 13, 14]
    dead = sorted(killed.glob("wandb/offline-run-*/run-*.wandb"))
    assert rows(dead) == Counter(row for row in expected if row[0] <= RESUMED_AT)
    shutil.copytree(killed, older, ignore=shutil.ignore_patterns(".lock"))
    (snapshot,) = (older / "checkpoints").glob("step_*7.pt")
    for run, resume in ((killed, "auto"), (older, snapshot)):
        code, err = run_in_process([*args, f"resume={resume}", f"hydra.run.dir={run}"])
        assert code == 0, err
        logs = finished_wandb_logs(run, sessions=2)
        assert rows(logs) == expected, f"resume={resume}"
        assert row_steps(logs) == [3, 6, 7, 10, 13, 14], f"resume={resume}"
