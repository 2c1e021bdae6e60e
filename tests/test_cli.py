"""The command line as a user types it: one real process end to end, the rest in-process
through the same entry point (``sam_train.cli.main``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import QUICK
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sam_train.callbacks.tensorboard import tensorboard_tag

STEPS = 21  # 1347 training digits // 64


def _tags(run_dir: Path) -> set[str]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return set(events.Tags()["scalars"])


@pytest.mark.slow
def test_quickstart_in_a_real_process_reaches_95_percent_and_writes_every_output(cli, tmp_path):
    """The quickstart cut to 3 of its 30 epochs: 98.0% at the third, measured in process."""
    run = tmp_path / "run"
    result = cli(
        ["experiment=quickstart", "trainer.epochs=3", f"hydra.run.dir={run}"], cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    results = json.loads((run / "results.json").read_text())
    assert results["final_acc1"] >= 95.0
    assert results["test_images"] == 450 and results["epochs_run"] == 3
    for key in ("best_acc1", "best_acc5", "final_acc5", "final_train_loss", "images_per_sec"):
        assert results[key] is not None, key
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert {
        tensorboard_tag(name)
        for name in (
            "train/loss",
            "train/acc1",
            "test/loss",
            "test/acc1",
            "test/acc5",
            "lr",
            "throughput/images_per_sec",
            "sam/grad_norm",
        )
    } <= _tags(run)
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scheduler", "epoch", "config", "run_state"} <= set(last)
    assert last["optimizer"]["state"], "the base optimizer's momentum must be checkpointed"
    assert last["config"]["sam"]["rho"] == 0.05 and last["run_state"]["complete"]
    assert (run / "checkpoints" / "best.pt").is_file()


def test_sam_none_trains_with_the_base_optimizer_only(cli_in_process, tmp_path):
    run = tmp_path / "run"
    code, err = cli_in_process([*QUICK, "sam=none", f"hydra.run.dir={run}"])
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert "SGD without SAM (sam=none)" in log and "over SGD" not in log
    assert tensorboard_tag("sam/grad_norm") not in _tags(run)
    assert json.loads((run / "results.json").read_text())["sam"] == "none"


def test_resume_from_a_file_of_another_folder_continues_that_run(cli_in_process, tmp_path):
    """A new folder may start from another run's checkpoint: the run goes on at its step, with
    its weights and momentum, and trains only the new epoch."""
    first, second = tmp_path / "first", tmp_path / "second"
    assert cli_in_process([*QUICK, f"hydra.run.dir={first}"])[0] == 0
    source = first / "checkpoints" / "last.pt"
    code, err = cli_in_process(
        [*QUICK, "trainer.epochs=3", f"resume={source}", f"hydra.run.dir={second}"]
    )
    assert code == 0, err
    assert f"resumed from {source} at step {2 * STEPS}" in (second / "train.log").read_text()
    results = json.loads((second / "results.json").read_text())
    assert results["epochs_run"] == 1 and results["epochs"] == 3
    assert torch.load(second / "checkpoints" / "last.pt", weights_only=False)["global_step"] == (
        3 * STEPS
    )
    original = torch.load(source, weights_only=False)
    assert original["global_step"] == 2 * STEPS, "the source run is left as it was"


def test_cifar_run_on_tiny_on_disk_data(cli_in_process, tmp_path, tiny_cifar100):
    run = tmp_path / "run"
    code, err = cli_in_process(
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
        ]
    )
    assert code == 0, err
    assert json.loads((run / "results.json").read_text())["test_images"] == 20


@pytest.mark.slow
def test_bad_overrides_exit_2_in_a_real_process_with_one_line(cli, tmp_path):
    """The full table is in test_bad_input.py (in-process); here the real process exit code,
    and the line printed once (not again by the log's console handler)."""
    result = cli(["sam.rho=-1", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("sam.rho must be >= 0") == 1
    assert "sam.rho must be >= 0" not in result.stdout
    assert "Traceback" not in result.stderr


def test_help_and_cfg_job(cli_in_process, capsys):
    code, _ = cli_in_process(["--help"])
    help_text = capsys.readouterr().out
    assert code == 0
    assert (
        "sam-train" in help_text
        and "dataset: cifar10, cifar100, digits, fgvc_aircraft, flowers102, food101, imagenet, "
        "oxford_pets, stanford_cars"
        in help_text
    )
    code, _ = cli_in_process(["dataset=cifar100", "model=wrn28_10", "sam.rho=0.05", "--cfg", "job"])
    job = capsys.readouterr().out
    assert code == 0
    assert "name: wrn28_10" in job and "rho: 0.05" in job
