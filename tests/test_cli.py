"""The command line end to end, as a user types it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

QUICK = ["trainer.epochs=3", "trainer.log_every=5"]


def _tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_quickstart_reaches_95_percent_and_writes_every_output(cli, tmp_path):
    run = tmp_path / "run"
    result = cli(["experiment=quickstart", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["final_acc1"] >= 95.0
    assert results["test_images"] == 450 and results["epochs_run"] == 30
    for key in (
        "best_acc1",
        "best_acc5",
        "final_acc5",
        "final_train_loss",
        "wall_time_s",
        "images_per_sec",
    ):
        assert key in results
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert {
        "train/loss",
        "train/acc1",
        "test/loss",
        "test/acc1",
        "test/acc5",
        "lr",
        "throughput/images_per_sec",
        "sam/grad_norm",
    } <= _tags(run)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "config"} <= set(last)
    assert last["optimizer"]["state"], "the base optimizer's momentum must be checkpointed"
    assert last["config"]["sam"]["rho"] == 0.05
    assert (run / "checkpoints" / "best.pt").is_file()


def test_sam_none_trains_with_the_base_optimizer_only(cli, tmp_path):
    run = tmp_path / "run"
    result = cli(
        ["experiment=quickstart", "sam=none", *QUICK, f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "SGD over SGD" in (run / "train.log").read_text()
    assert "sam/grad_norm" not in _tags(run)
    assert json.loads((run / "results.json").read_text())["sam"] == "none"


def test_resume_continues_from_the_last_checkpoint(cli, tmp_path):
    first = tmp_path / "first"
    assert (
        cli(["experiment=quickstart", *QUICK, f"hydra.run.dir={first}"], cwd=tmp_path).returncode
        == 0
    )
    second = tmp_path / "second"
    result = cli(
        [
            "experiment=quickstart",
            "trainer.epochs=4",
            f"resume={first}/checkpoints/last.pt",
            f"hydra.run.dir={second}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((second / "results.json").read_text())
    assert results["epochs_run"] == 1


def test_cifar_run_on_tiny_on_disk_data(cli, tmp_path, tiny_cifar100):
    run = tmp_path / "run"
    result = cli(
        [
            "dataset=cifar100",
            f"dataset.root={tiny_cifar100}",
            "dataset.verify_checksums=false",
            "model=wrn16_8",
            "model.name=wrn16_4",
            "trainer.epochs=1",
            "trainer.batch_size=8",
            "trainer.num_workers=0",
            "trainer.device=cpu",
            f"hydra.run.dir={run}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "results.json").read_text())["test_images"] == 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sam.rho=-1"], "sam.rho must be >= 0"),  # caught before torch is imported
        (["resume=/nonexistent.pt"], "resume=/nonexistent.pt: no such checkpoint file"),
    ],
)
def test_bad_overrides_exit_2_in_a_real_process(cli, tmp_path, args, message):
    """The full table is in test_bad_input.py (in-process); here the real process exit code."""
    result = cli([*args, "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_help_and_cfg_job(cli, tmp_path):
    help_text = cli(["--help"], cwd=tmp_path)
    assert help_text.returncode == 0
    assert (
        "sam-train" in help_text.stdout
        and "dataset: cifar10, cifar100, digits, imagenet" in help_text.stdout
    )
    job = cli(["dataset=cifar100", "model=wrn28_10", "sam.rho=0.05", "--cfg", "job"], cwd=tmp_path)
    assert job.returncode == 0
    assert "name: wrn28_10" in job.stdout and "rho: 0.05" in job.stdout
