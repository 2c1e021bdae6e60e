"""sam-compare: its numbers against the runs' own results.json and metrics.csv, the status of
finished, stopped, running and failed runs, a sweep folder expanded, bad paths refused."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
from conftest import run_in_process

from sam_train import compare
from sam_train.run_folder import RunLock

BASE = [
    "experiment=quickstart",
    "dataset.test_fraction=0.75",
    "trainer.epochs=2",
    "scheduler.warmup_epochs=1",
    "logger=tensorboard",
]
RUNS = {"sgd": ["sam=none", "ema.decay=0.9"], "sam": ["sam=sam"]}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two finished 2-epoch runs in one folder: SGD with EMA, SAM without."""
    root = tmp_path_factory.mktemp("sweep")
    for name, extra in RUNS.items():
        code, err = run_in_process([*BASE, *extra, f"hydra.run.dir={root / name}"])
        assert code == 0, err
    return root


def _metrics(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_sweep_folder_expands_to_its_runs_and_the_rows_are_their_results(sweep):
    runs = compare.find_runs([sweep])
    assert runs == [sweep / "sam", sweep / "sgd"]
    rows, shared = compare.compare(runs)
    assert shared == dict(item.split("=", 1) for item in BASE)
    by_label = {row["run"]: row for row in rows}
    assert set(by_label) == {"sam=sam", "sam=none ema.decay=0.9"}
    for label, name in (("sam=sam", "sam"), ("sam=none ema.decay=0.9", "sgd")):
        results = json.loads((sweep / name / "results.json").read_text())
        row = by_label[label]
        assert row["status"] == "finished" and row["epochs"] == "2/2"
        assert row["final_acc1"] == results["final_acc1"]
        assert row["best_acc1"] == results["best_acc1"]
        assert row["best_epoch"] == results["best_epoch"]
        assert row["ema_acc1"] == results.get("ema_final_acc1")
        assert row["passes_per_step"] == results["passes_per_step"]
        assert row["images_per_sec"] == results["images_per_sec"]
        assert row["train_seconds"] == results["train_seconds"]
    assert by_label["sam=sam"]["passes_per_step"] == 2.0  # SAM: two passes, SGD: one
    assert by_label["sam=none ema.decay=0.9"]["passes_per_step"] == 1.0
    assert by_label["sam=sam"]["ema_acc1"] is None  # no EMA in that run
    assert by_label["sam=none ema.decay=0.9"]["ema_acc1"] is not None


def test_a_stopped_run_is_read_from_its_metrics_csv(sweep, tmp_path):
    run = Path(shutil.copytree(sweep / "sgd", tmp_path / "sgd"))
    (run / "results.json").unlink()
    rows = _metrics(run)
    (row,) = compare.compare([run])[0]
    assert row["status"] == "stopped" and row["epochs"] == "2/2"
    accs = [float(r["test_acc1"]) for r in rows]
    assert row["final_acc1"] == accs[-1]
    assert row["best_acc1"] == max(accs)
    assert row["best_epoch"] == 1 + accs.index(max(accs))
    assert row["ema_acc1"] == float(rows[-1]["test_ema_acc1"])
    seconds = sum(float(r["epoch_seconds"]) for r in rows)
    assert row["train_seconds"] == pytest.approx(seconds)
    results = json.loads((sweep / "sgd" / "results.json").read_text())
    assert row["images_per_sec"] == pytest.approx(results["images_per_sec"], rel=0.02)


def test_status_running_while_locked_and_failed_without_a_checkpoint(sweep, tmp_path):
    run = Path(shutil.copytree(sweep / "sam", tmp_path / "sam"))
    with RunLock(run):
        assert compare.summarize(run)["status"] == "running"
    assert compare.summarize(run)["status"] == "finished"
    (run / "results.json").unlink()
    shutil.rmtree(run / "checkpoints")
    assert compare.summarize(run)["status"] == "failed"


def test_the_formats_and_the_plot(sweep, tmp_path, capsys):
    out = tmp_path / "curves.png"
    compare.main([str(sweep), "--format", "csv", "--plot", str(out)])
    table = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [row["run"] for row in table] == ["sam=sam", "sam=none ema.decay=0.9"]
    results = json.loads((sweep / "sam" / "results.json").read_text())
    assert float(table[0]["final_acc1"]) == results["final_acc1"]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    compare.main([str(sweep / "sam"), str(sweep / "sgd"), "--format", "markdown"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("shared: experiment=quickstart")
    assert lines[1].startswith("| run | status |") and lines[2].startswith("| --- |")
    assert lines[3].startswith(f"| sam=sam | finished | 2/2 | {results['final_acc1']:.2f} |")


def test_the_tensorboard_view_names_each_run_by_what_differs(sweep, tmp_path, capsys):
    """TensorBoard names a run by its folder: the view's folders are the table's labels, and
    TensorBoard reads the runs' own scalars through the links; a second call rebuilds it."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    view = tmp_path / "view"
    compare.main([str(sweep), "--tensorboard", str(view)])
    assert capsys.readouterr().err == f"2 runs in {view}: tensorboard --logdir {view}\n"
    events = EventMultiplexer().AddRunsFromDirectory(str(view)).Reload()
    assert set(events.Runs()) == {"sam=sam", "sam=none ema.decay=0.9"}
    for label, name in (("sam=sam", "sam"), ("sam=none ema.decay=0.9", "sgd")):
        results = json.loads((sweep / name / "results.json").read_text())
        assert events.Scalars(label, "test/acc1")[-1].value == pytest.approx(results["final_acc1"])
    compare.main([str(sweep / "sam"), "--tensorboard", str(view)])
    capsys.readouterr()
    assert sorted(p.name for p in view.iterdir() if p.is_dir()) == ["sam"]  # the folder's name
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(SystemExit) as stop:
        compare.main([str(sweep), "--tensorboard", str(tmp_path / "busy")])
    out = capsys.readouterr()
    assert stop.value.code == 2 and not out.out and "is not empty" in out.err


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: (tmp / "f.txt").write_text("x") and tmp / "f.txt", "is a file, expected"),
        (lambda tmp: tmp, "holds no sam-train run"),
    ],
)
def test_a_path_that_is_not_a_run_is_one_line_and_exit_2(tmp_path, capsys, make, message):
    with pytest.raises(SystemExit) as stop:
        compare.main([str(make(tmp_path))])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("sam-compare: error:")


@pytest.fixture(scope="module")
def failed_sweep(tmp_path_factory) -> Path:
    """What a multirun leaves when the config check refuses every job: a job log each, and no
    ``.hydra/`` (the run never started)."""
    root = tmp_path_factory.mktemp("failed") / "sweep"
    args = ["experiment=quickstart", "-m", "trainer.epochs=0,-1", f"hydra.sweep.dir={root}"]
    code, err = run_in_process(args)
    assert code == 1, err
    return root


def test_a_sweep_whose_jobs_all_failed_says_what_it_holds(failed_sweep, capsys):
    """Not "holds no sam-train run": how many jobs, and the first one's log and last line."""
    logs = sorted(failed_sweep.glob("*/train.log"))
    assert len(logs) == 2 and not list(failed_sweep.rglob(".hydra"))
    with pytest.raises(SystemExit) as stop:
        compare.main([str(failed_sweep)])
    out = capsys.readouterr()
    epochs = logs[0].parent.name.split(",")[0]  # trainer.epochs=-1 (the sorted first)
    assert stop.value.code == 2 and not out.out
    assert out.err.splitlines() == [
        f"sam-compare: error: {failed_sweep} holds 2 sweep job(s), none of which started a run; "
        f"{logs[0]} ends: trainer.epochs must be > 0, got {epochs.split('=')[1]}"
    ]
    with pytest.raises(SystemExit) as stop:
        compare.main([str(logs[1].parent)])  # one job's folder
    assert capsys.readouterr().err.splitlines() == [
        f"sam-compare: error: {logs[1].parent} is a sweep job that ended before its run "
        f"started; {logs[1]} ends: trainer.epochs must be > 0, got 0"
    ]


def test_jobs_that_started_no_run_are_named_beside_the_table(failed_sweep, sweep, tmp_path, capsys):
    mixed = Path(shutil.copytree(failed_sweep, tmp_path / "mixed"))
    shutil.copytree(sweep / "sam", mixed / "sam")
    compare.main([str(mixed)])
    out = capsys.readouterr()
    assert [line.split()[:2] for line in out.out.splitlines()[-1:]] == [["sam", "finished"]]
    log = mixed / min(failed_sweep.glob("*/train.log")).relative_to(failed_sweep)
    assert out.err.splitlines() == [
        f"sam-compare: 2 sweep job(s) under {mixed} started no run (not in the table): see {log}"
    ]
