"""Every path argument of every command and script says what it got and what it wants, in one
line and exit code 2, before any work: a run folder where a checkpoint file is wanted, an
existing file where an output folder is wanted, a folder where a file is to be written. Their
option mistakes (argparse's) are one line too."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import QUICK, REPO, run_in_process

from sam_train import evaluate as sam_eval
from sam_train.analysis import cli as sam_analyze

sys.path.insert(0, str(REPO / "scripts"))
import paper_table
import plot_runs


def _exit(main: Callable[[list[str]], object], argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@pytest.fixture
def run_folder(tmp_path) -> Path:
    """A folder as a run leaves it, with a damaged checkpoint: scoring it would fail
    differently, so a path error proves that nothing was loaded."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_text("not a checkpoint")
    return run


@pytest.mark.parametrize("main", [sam_eval.main, sam_analyze.main], ids=["eval", "analyze"])
def test_a_run_folder_given_for_a_checkpoint(main, run_folder, capsys):
    code, err = _exit(main, [str(run_folder)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"sam-{'eval' if main is sam_eval.main else 'analyze'}: error: {run_folder} is a "
        "folder, expected a checkpoint file (.pt)"
    ]


@pytest.mark.parametrize("main", [sam_eval.main, sam_analyze.main], ids=["eval", "analyze"])
def test_an_existing_file_given_for_out_is_refused_before_any_work(main, run_folder, capsys):
    out = run_folder / "taken"
    out.write_text("")
    code, err = _exit(
        main, [str(run_folder / "checkpoints" / "last.pt"), "--out", str(out)], capsys
    )
    assert code == 2
    (line,) = err.splitlines()
    assert f"error: {out} is a file, expected a" in line and "corrupt" not in line


@pytest.mark.parametrize("key", ["resume", "model.init_from"])
def test_sam_train_names_a_folder_given_for_a_checkpoint(key, run_folder, tmp_path):
    code, err = run_in_process([*QUICK, f"{key}={run_folder}", f"hydra.run.dir={tmp_path / 'new'}"])
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(
        f"sam-train: error: {key}={run_folder} is a folder, expected a checkpoint"
    )
    assert not (tmp_path / "new" / "checkpoints").exists()


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_sam_train_names_a_file_given_for_its_folder(key, tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("kept")
    multirun = ["-m", "seed=1,2"] if key == "hydra.sweep.dir" else []
    code, err = run_in_process([*QUICK, *multirun, f"{key}={a_file}"])
    assert code == 2
    assert err.splitlines() == [
        f"sam-train: error: {key}={a_file} is a file, expected a folder; choose another {key}"
    ]
    assert a_file.read_text() == "kept"


def test_the_scripts_answer_their_path_arguments(run_folder, tmp_path, capsys):
    a_file = run_folder / "checkpoints" / "last.pt"
    code, err = _exit(paper_table.main, [str(a_file)], capsys)
    assert code == 2
    assert err.splitlines() == [f"paper_table: error: {a_file} is a file, expected a run folder"]
    code, err = _exit(plot_runs.main, [str(run_folder), "--out", str(tmp_path)], capsys)
    assert code == 2
    assert err.splitlines() == [
        f"plot_runs: error: {tmp_path} is a folder, expected the PNG file to write (--out)"
    ]


# Every command's and script's module with an argparse ``main(argv)`` (the scripts from
# scripts/, on the path above).
ENTRY_POINTS = [
    "sam_train.evaluate",
    "sam_train.analysis.cli",
    "sam_train.compare",
    "sam_train.export",
    "sam_train.predict",
    "plot_runs",
    "paper_table",
    "reproduce",
    "efficiency",
    "gpu_check",
    "bench.main",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_an_option_mistake_is_one_line_without_the_usage_block(module, capsys):
    """argparse prints its usage before the error; every entry point says one line instead."""
    main = importlib.import_module(module).main
    code, err = _exit(main, ["--no-such-option"], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert ": error: " in line and line.endswith("(see --help)")  # a missing argument or this


@pytest.mark.parametrize("module", ["sam_train.evaluate", "sam_train.analysis.cli", "bench.main"])
def test_a_device_torch_does_not_know_is_one_line_before_any_work(module, run_folder, capsys):
    """``--device gpu``: one line naming the value (the checkpoint, damaged, is never read)."""
    main = importlib.import_module(module).main
    where = ["--out", str(run_folder / "bench")] if module == "bench.main" else []
    checkpoint = [] if where else [str(run_folder / "checkpoints" / "last.pt")]
    code, err = _exit(main, [*checkpoint, "--device", "gpu", *where], capsys)
    assert code == 2
    (line,) = err.splitlines()
    assert line.endswith("error: device 'gpu' is not one of auto, cpu, cuda or cuda:N")


# A near miss of each entry point's own flags, choices and overrides: the nearest one named, by
# the one implementation (errors.closest; the overrides through sam-train's own check).
NEAR_MISSES = [
    ("sam_train.evaluate", ["{ckpt}", "--pre-class"], "unrecognized arguments: --pre-class; "),
    ("sam_train.analysis.cli", ["{ckpt}", "--batchs", "4"], "unrecognized arguments: --batchs 4; "),
    (
        "sam_train.analysis.cli",
        ["{ckpt}", "--norm-statistics", "bach"],
        "argument --norm-statistics: invalid choice: 'bach'; ",
    ),
    (
        "sam_train.analysis.cli",
        ["{ckpt}", "trainer.bach_size=8"],
        "unknown key trainer.bach_size; ",
    ),
    ("sam_train.compare", ["{run}", "--fromat", "csv"], "unrecognized arguments: --fromat csv; "),
    ("sam_train.compare", ["{run}", "--format", "markdwn"], "argument --format: invalid choice: "),
    ("plot_runs", ["{run}", "--out", "{run}/x.png", "--colmun", "x"], "unrecognized arguments: "),
    ("paper_table", ["{run}", "--sedes"], "unrecognized arguments: --sedes; "),
    ("reproduce", ["cifar1O", "--dry-run"], "argument table: invalid choice: 'cifar1O'; "),
    ("reproduce", ["noisy_digits", "--dry-rn"], "unrecognized arguments: --dry-rn; "),
    (
        "reproduce",
        ["noisy_digits", "--dry-run", "trainer.epohcs=3"],
        "unknown key trainer.epohcs; ",
    ),
    ("reproduce", ["noisy_digits", "--dry-run", "sam=sma"], "sam=sma is not an option; "),
    ("efficiency", ["tabel"], "argument action: invalid choice: 'tabel'; "),
    ("gpu_check", ["--devcie", "cpu"], "unrecognized arguments: --devcie cpu; "),
    ("bench.main", ["--quik"], "unrecognized arguments: --quik; "),
]
NEAREST = [
    "did you mean --per-class?",
    "did you mean --batches?",
    "did you mean 'batch'?",
    "did you mean trainer.batch_size?",
    "did you mean --format?",
    "did you mean 'markdown'?",
    "did you mean --column?",
    "did you mean --seeds?",
    "did you mean 'cifar10'?",
    "did you mean --dry-run?",
    "did you mean trainer.epochs?",
    "did you mean sam=sam?",
    "did you mean 'table'?",
    "did you mean --device?",
    "did you mean --quick?",
]


@pytest.mark.parametrize(
    ("module", "argv", "start", "nearest"),
    [(*case, near) for case, near in zip(NEAR_MISSES, NEAREST, strict=True)],
    ids=[f"{m} {' '.join(a)}" for m, a, _ in NEAR_MISSES],
)
def test_every_entry_point_names_the_nearest_flag_choice_or_key(
    module, argv, start, nearest, run_folder, capsys
):
    main = importlib.import_module(module).main
    fill = {"ckpt": run_folder / "checkpoints" / "last.pt", "run": run_folder}
    code, err = _exit(main, [arg.format(**fill) for arg in argv], capsys)
    assert code == 2
    (line,) = err.splitlines()
    message = line.split(": error: ", 1)[1]
    assert message.startswith(start) and nearest in message, line
    assert sorted(p.name for p in run_folder.iterdir()) == ["checkpoints"], "nothing written"


def test_the_scripts_name_a_sweep_job_that_never_started_a_run(tmp_path, capsys):
    """paper_table.py and plot_runs.py skip it saying so, as sam-compare refuses it: with its
    log's last line, not 'no results.json' (the job folder as a refused job leaves it)."""
    from sam_train.run_folder import SWEEP_RECORD

    job = tmp_path / "sweep" / "seed=1"
    job.mkdir(parents=True)
    (tmp_path / "sweep" / SWEEP_RECORD).write_text("hydra: {}\n")
    log = job / "train.log"
    log.write_text("[2026-12-06 06:39:57,920][sam_train][ERROR] - trainer.epochs must be > 0\n")
    why = f"{job} is a sweep job that ended before its run started; {log} ends: trainer.epochs "
    code, err = _exit(paper_table.main, [str(job)], capsys)
    assert code == 2 and err.splitlines()[0] == f"paper_table: skipping {why}must be > 0"
    code, err = _exit(plot_runs.main, [str(job), "--out", str(tmp_path / "c.png")], capsys)
    assert code == 2 and err.splitlines()[0] == f"skipping {why}must be > 0"
