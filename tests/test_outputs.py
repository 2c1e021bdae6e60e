"""What a user reads: metrics.csv (continued across resumes), the loggers (each writes its files
offline), TensorBoard's HParams (the overridden keys first, the final metrics), sweep folders
named by their overrides, the Optuna search, and an ETA that counts evaluation. Runs go
through the real entry point in this process, on digits with SGD and 7 steps per epoch."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import time
from pathlib import Path
from typing import ClassVar

import pytest
from conftest import run_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import sam_train.train as train_module
from sam_train.callbacks import Callback
from sam_train.callbacks.metrics_csv import FIELDS
from sam_train.callbacks.tensorboard import GROUPS, tensorboard_tag
from sam_train.callbacks.wandb_records import kinds
from sam_train.cli import MAX_DIRNAME_BYTES, job_dirname
from sam_train.config.schema import LOGGER_PACKAGES, LoggerConfig
from sam_train.hparams import CORE_HPARAMS, curated_hparams
from sam_train.trainer import Trainer

STEPS = 7  # 449 training digits / 64, the last partial batch dropped
BASE = [
    "experiment=quickstart",
    "sam=none",
    "dataset.test_fraction=0.75",
    "trainer.epochs=2",
    "scheduler.warmup_epochs=1",
    "trainer.log_every=3",
]
TEST_COLUMNS = ("epoch", "step", "lr", "test_loss", "test_acc1", "test_acc5")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _scalars(run: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.step, e.value) for e in events.Scalars(tag)]


@pytest.fixture
def inject(monkeypatch):
    """Add a callback to the next runs' callbacks (after the built-in ones)."""

    def add(callback: Callback) -> None:
        original = train_module.build_callbacks
        monkeypatch.setattr(
            train_module, "build_callbacks", lambda *a, **k: [*original(*a, **k), callback]
        )

    return add


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted 2-epoch run with a snapshot per checkpoint."""
    run = tmp_path_factory.mktemp("reference") / "run"
    args = [*BASE, "logger=[tensorboard,csv]", "checkpoint.keep_last=3", f"hydra.run.dir={run}"]
    code, err = run_in_process(args)
    assert code == 0, err
    return run


# ----------------------------------------------------------------------------- metrics.csv
def test_metrics_csv_has_one_row_per_epoch(reference):
    rows = _rows(reference / "metrics.csv")
    assert list(rows[0]) == list(FIELDS)
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "7"), ("2", "14")]
    results = json.loads((reference / "results.json").read_text())
    assert float(rows[-1]["test_acc1"]) == pytest.approx(results["final_acc1"], abs=1e-4)
    assert float(rows[-1]["train_loss"]) == pytest.approx(results["final_train_loss"], abs=1e-5)
    assert all(r["test_ema_acc1"] == "" for r in rows)  # no EMA in this run
    assert all(float(r["epoch_seconds"]) > 0 and float(r["images_per_sec"]) > 0 for r in rows)
    assert float(rows[-1]["lr"]) == pytest.approx(0.0, abs=1e-9)  # the cosine schedule's end


def test_a_session_that_died_after_its_rows_resumes_without_duplicates(reference, tmp_path):
    """The rows and scalars of epoch 2 were written, its checkpoint lost: the resume drops
    them and writes them again, once, with the same values."""
    run = shutil.copytree(reference, tmp_path / "run")
    checkpoints = run / "checkpoints"
    shutil.copy(checkpoints / f"step_{STEPS:09d}.pt", tmp_path / "epoch1.pt")
    shutil.rmtree(checkpoints)
    checkpoints.mkdir()
    shutil.copy(tmp_path / "epoch1.pt", checkpoints / "last.pt")
    args = [*BASE, "logger=[tensorboard,csv]", "resume=auto", f"hydra.run.dir={run}"]
    code, err = run_in_process(args)
    assert code == 0, err
    expected, got = _rows(reference / "metrics.csv"), _rows(run / "metrics.csv")
    columns = (*TEST_COLUMNS, "train_loss", "train_acc1")
    assert [[r[c] for c in columns] for r in got] == [[r[c] for c in columns] for r in expected]
    steps = [row["step"] for row in _rows(run / "scalars.csv") if row["name"] == "test/acc1"]
    assert steps == ["7", "14"]
    assert _scalars(run, "test/acc1") == _scalars(reference, "test/acc1")


def test_a_mid_epoch_stop_continues_metrics_csv(inject, reference, tmp_path):
    """Stopped by SIGTERM in epoch 2 (a mid-epoch checkpoint), resumed: one row per epoch,
    the same evaluations as an uninterrupted run's."""

    class Stop(Callback):
        def on_train_step_end(self, trainer, state, output):
            if state.global_step == STEPS + 2:
                os.kill(os.getpid(), signal.SIGTERM)

    run = tmp_path / "run"
    inject(Stop())
    code, _ = run_in_process([*BASE, "logger=none", f"hydra.run.dir={run}"])
    assert code == 75
    assert [r["epoch"] for r in _rows(run / "metrics.csv")] == ["1"]
    code, err = run_in_process([*BASE, "logger=none", "resume=auto", f"hydra.run.dir={run}"])
    assert code == 0, err
    got, expected = _rows(run / "metrics.csv"), _rows(reference / "metrics.csv")
    assert [[r[c] for c in TEST_COLUMNS] for r in got] == [
        [r[c] for c in TEST_COLUMNS] for r in expected
    ]


# ----------------------------------------------------------------------------- loggers
def _one_epoch(run: Path, *extra: str) -> dict:
    code, err = run_in_process([*BASE, "trainer.epochs=1", *extra, f"hydra.run.dir={run}"])
    assert code == 0, err
    return json.loads((run / "results.json").read_text())


def _needs(package: str) -> None:
    if importlib.util.find_spec(package) is None:
        pytest.skip(f"{package} is not installed (uv sync --extra {package})")


def test_the_logger_nodes_and_their_packages_are_declared_together():
    assert set(LOGGER_PACKAGES) == set(LoggerConfig.__dataclass_fields__)


def test_csv_logger_writes_every_logged_scalar(tmp_path):
    results = _one_epoch(tmp_path / "run", "logger=csv")
    rows = _rows(tmp_path / "run" / "scalars.csv")
    names = {row["name"] for row in rows}
    assert {"train/loss", "lr", "test/acc1", "best/acc1", "final/acc1"} <= names
    assert [r["step"] for r in rows if r["name"] == "train/loss"] == ["3", "6", "7"]
    final = next(float(r["value"]) for r in rows if r["name"] == "final/acc1")
    assert final == pytest.approx(results["final_acc1"])
    assert not list((tmp_path / "run").glob("events.out.tfevents.*"))  # tensorboard not chosen


def finished_wandb_logs(run_dir: Path, sessions: int = 1, timeout: float = 300.0) -> list[Path]:
    """The offline transaction logs of the run's ``sessions`` W&B sessions, oldest first, once
    the last is written to its end (its ``exit`` record): ``run.finish()`` returns while the
    service has written only the file's 7-byte header."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
        if len(found) == sessions and "exit" in kinds(found[-1]):
            return found
        assert time.monotonic() < deadline, f"no complete W&B log under {run_dir} in {timeout} s"
        time.sleep(0.2)


def test_wandb_logger_writes_an_offline_run(tmp_path, monkeypatch):
    _needs("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    results = _one_epoch(tmp_path / "run", "logger=wandb")
    (records,) = finished_wandb_logs(tmp_path / "run")  # what `wandb sync` uploads
    data = records.read_bytes()
    assert b"final/acc1" in data and json.dumps(results["final_acc1"]).encode() in data
    assert b"train/loss" in data and b"sam.name" in data
    assert "W&B:" not in (tmp_path / "run" / "train.log").read_text()  # its checkpoint waited


def test_a_disabled_wandb_run_writes_no_log_and_checkpoints_do_not_wait_for_one(
    tmp_path, monkeypatch
):
    _needs("wandb")
    import sam_train.callbacks.wandb_logger as wandb_logger

    monkeypatch.setattr(wandb_logger, "WRITE_TIMEOUT", 0.0)  # a wait would give up and say so
    _one_epoch(tmp_path / "run", "logger=wandb", "logger.wandb.mode=disabled")
    assert "W&B:" not in (tmp_path / "run" / "train.log").read_text()
    assert not list(tmp_path.glob("run/wandb/*/*.wandb"))


@pytest.mark.slow  # MLflow builds its SQLite schema (alembic migrations): about 7 s
def test_mlflow_logger_writes_a_local_store(tmp_path):
    _needs("mlflow")
    from mlflow.tracking import MlflowClient

    run = tmp_path / "run"
    results = _one_epoch(run, "logger=mlflow")
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("sam-train").experiment_id])
    assert found.info.status == "FINISHED" and found.info.run_name == "run"
    assert found.data.params["sam.name"] == "none"
    assert found.data.params["dataset.test_fraction"] == "0.75"
    assert found.data.metrics["final/acc1"] == pytest.approx(results["final_acc1"])
    history = client.get_metric_history(found.info.run_id, "train/loss")
    assert [m.step for m in history] == [3, 6, 7]


@pytest.mark.parametrize("logger", ["wandb", "mlflow"])
def test_a_logger_without_its_package_is_refused_before_any_work(tmp_path, monkeypatch, logger):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == logger else find_spec(name, *a),
    )
    run = tmp_path / "run"
    code, err = run_in_process([*BASE, f"logger=[tensorboard,{logger}]", f"hydra.run.dir={run}"])
    assert code == 2
    assert err.strip().splitlines() == [
        f"sam-train: error: logger={logger} needs the {logger} package, not installed here: "
        f"run `uv sync --extra {logger}` (or `pip install '.[{logger}]'` in the checkout)"
    ]
    assert not (run / "checkpoints").exists()


# ----------------------------------------------------------------------------- HParams, sweeps
def test_hparams_lead_with_the_overrides_then_the_core_set():
    flat = {"sam.name": "sam", "sam.rho": 0.1, "seed": 0, "optimizer.lr": 0.05}
    flat |= {"model.name": "m", "dataset.name": "d", "trainer.device": "cpu", "augment.name": "b"}
    overrides = ["experiment=quickstart", "sam.rho=0.1", "+augment.name=b", "trainer.device=cpu"]
    overrides += ["logger=[tensorboard,csv]", "hydra.run.dir=x", "resume=auto", "sam=sam"]
    hparams = curated_hparams(flat, overrides)
    assert list(hparams)[:4] == ["experiment", "sam.rho", "augment.name", "sam.name"]
    assert hparams["experiment"] == "quickstart" and hparams["sam.rho"] == 0.1
    led = list(hparams)[:4]
    assert list(hparams)[4:] == [k for k in CORE_HPARAMS if k in flat and k not in led]
    assert "trainer.device" not in hparams and "logger" not in hparams


def test_a_sweep_job_folder_is_named_by_its_overrides():
    assert job_dirname(3, "sam.name=sam,sam.rho=0.05") == "sam.name=sam,sam.rho=0.05"
    assert job_dirname(3, "dataset.name=x,model.kwargs.path=/a/b") == (
        "dataset.name=x,model.kwargs.path=_a_b"
    )
    assert job_dirname(3, "") == "3"
    assert job_dirname(3, "x" * (MAX_DIRNAME_BYTES + 1)) == "3"


def test_a_sweep_job_folder_leads_with_what_the_sweep_varies(monkeypatch, tmp_path):
    overrides = "experiment=quickstart,model.kwargs.path=/a/b,sam.rho=0.05,seed=0"
    monkeypatch.setattr("sys.argv", ["sam-train", "-m", "sam.rho=0.05,0.1", "seed=range(2)"])
    assert job_dirname(1, overrides, str(tmp_path)) == (
        "sam.rho=0.05,seed=0,experiment=quickstart,model.kwargs.path=_a_b"
    )
    old = tmp_path / "experiment=quickstart,model.kwargs.path=_a_b,sam.rho=0.05,seed=0"
    old.mkdir()  # an earlier sweep's job, named before the swept keys led: resumed as it is
    assert job_dirname(1, overrides, str(tmp_path)) == old.name


def test_tensorboard_files_every_scalar_under_test_or_train():
    names = ("train/loss", "test/acc1", "test_ema/acc1", "best/acc1", "lr", "sam/grad_norm")
    assert [tensorboard_tag(n) for n in names] == [
        "train/loss",
        "test/acc1",
        "test_ema/acc1",
        "test/best_acc1",
        "train/lr",
        "train/sam_grad_norm",
    ]


def _hparams_session(run: Path) -> tuple[list[str], dict[str, float], str]:
    """(the hyper-parameters' names, the session's scalars, its end status)."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(run), size_guidance={"scalars": 0})
    events.Reload()
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    end = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_end_info"])
    assert "_hparams_/experiment" not in content  # TensorBoard then ranks differing keys first
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    return list(start.session_start_info.hparams), scalars, str(end.session_end_info.status)


def test_a_sweep_names_its_jobs_and_logs_their_hparams_with_final_metrics(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "trainer.epochs=1", "sam=none,sam", f"hydra.sweep.dir={sweep}"]
    code, err = run_in_process(args)
    assert code == 0, err
    # The swept key first, then the others sorted by key; trainer.log_every (how often to
    # log) is left out of the name.
    rest = "dataset.test_fraction=0.75,experiment=quickstart,scheduler.warmup_epochs=1"
    for name in ("none", "sam"):
        job = sweep / f"sam={name},{rest},trainer.epochs=1"
        results = json.loads((job / "results.json").read_text())
        names, scalars, status = _hparams_session(job)
        overridden = {"experiment", "sam.name", "dataset.test_fraction", "trainer.epochs"}
        assert set(names) == {*overridden, "scheduler.warmup_epochs", *CORE_HPARAMS}
        assert scalars["test/acc1"] == pytest.approx(results["final_acc1"])  # the last point
        assert scalars[tensorboard_tag("best/acc1")] == pytest.approx(results["best_acc1"])
        assert status == "1"  # STATUS_SUCCESS
        # One TensorBoard run per job (no <job>/hparams beside it), opening on test/.
        assert {p.parent for p in job.rglob("events.out.tfevents.*")} == {job}
        groups = sorted({tag.split("/")[0] for tag in scalars})
        assert groups[0] == "test" and set(groups) <= set(GROUPS), groups
        assert not any(tag.startswith("final") for tag in scalars)  # no single-point charts


def test_the_optuna_search_maximises_best_acc1(tmp_path):
    if importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        pytest.skip("hydra-optuna-sweeper is not installed (uv sync --extra optuna)")
    import yaml

    sweep = tmp_path / "sweep"
    args = ["-m", *BASE, "trainer.epochs=1", "hparams_search=optuna", "hydra.sweeper.n_trials=2"]
    code, err = run_in_process([*args, "logger=none", f"hydra.sweep.dir={sweep}"])
    assert code == 0, err
    trials = [json.loads(p.read_text()) for p in sweep.glob("*/results.json")]
    assert len(trials) == 2
    found = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert found["best_value"] == max(t["best_acc1"] for t in trials)
    assert set(found["best_params"]) == {"sam.rho", "optimizer.lr"}


# ----------------------------------------------------------------------------- ETA
def test_the_eta_counts_the_evaluations_still_to_come(inject, tmp_path, monkeypatch):
    """Each evaluation takes 1.5 s more here. At the last step no step is left, so the ETA
    is the last epoch's evaluation alone: as long as the first epoch's (it was 0 before)."""
    evaluate = Trainer.evaluate

    def slow_evaluate(self):
        time.sleep(1.5)
        return evaluate(self)

    class Record(Callback):
        etas: ClassVar[dict[tuple[int, int], float]] = {}

        def on_log(self, trainer, state, metrics):
            self.etas[metrics["epoch"], metrics["step"]] = metrics["eta_seconds"]

    monkeypatch.setattr(Trainer, "evaluate", slow_evaluate)
    inject(Record())
    code, err = run_in_process([*BASE, "logger=none", f"hydra.run.dir={tmp_path}"])
    assert code == 0, err
    first_evaluation = float(_rows(tmp_path / "metrics.csv")[0]["eval_seconds"])
    assert first_evaluation >= 1.5
    assert Record.etas[1, STEPS] == pytest.approx(first_evaluation)
    assert Record.etas[1, 3] > first_evaluation  # the steps left, and the evaluation


# ----------------------------------------------------------------------------- plot_runs
def test_plot_runs_reads_metrics_csv_by_epoch(reference, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    import plot_runs

    (panel,) = plot_runs.collect([reference], "test_acc1").values()
    ((curve,),) = panel.values()
    rows = _rows(reference / "metrics.csv")
    assert list(curve.epochs) == [1, 2] and not curve.stopped
    assert list(curve.values) == [float(r["test_acc1"]) for r in rows]
    assert plot_runs.collect([reference], "test_ema_acc1") == {}  # no EMA: no curve
    out = tmp_path / "curves.png"
    assert plot_runs.main([str(reference), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_metrics_csv_and_the_loggers_carry_the_ema_scores(tmp_path):
    results = _one_epoch(tmp_path / "run", "ema.decay=0.9", "logger=csv")
    (row,) = _rows(tmp_path / "run" / "metrics.csv")
    assert float(row["test_ema_acc1"]) == pytest.approx(results["ema_final_acc1"], abs=1e-4)
    assert float(row["test_ema_acc1"]) != float(row["test_acc1"])
    scalars = {r["name"]: float(r["value"]) for r in _rows(tmp_path / "run" / "scalars.csv")}
    assert scalars["final_ema/acc1"] == pytest.approx(results["ema_final_acc1"])
