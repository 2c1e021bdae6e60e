"""Runs that are killed, signalled or restarted continue exactly where they stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import run_cli, sam_train_command, subprocess_env, torchrun_command

# Dropout and label noise make the run depend on every random draw being restored.
RUN = [
    "experiment=quickstart",
    "trainer.epochs=3",
    "trainer.log_every=1",
    "checkpoint.every_n_steps=1",
    "model.kwargs.drop_rate=0.2",
    "dataset.label_noise=0.2",
]
STEPS_PER_EPOCH = 21  # 1347 digits // 64


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["global_step"] == 3 * STEPS_PER_EPOCH
    return state["model"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("reference") / "run"
    result = run_cli([*RUN, f"hydra.run.dir={run}"], cwd=run.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return _final_weights(run)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        sam_train_command(args),
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for_step(proc: subprocess.Popen, global_step: int, timeout: float = 300) -> str:
    """Read the progress lines until the run has taken ``global_step`` steps; return them."""
    epoch, step = divmod(global_step - 1, STEPS_PER_EPOCH)
    marker = f"epoch {epoch + 1}/3  step {step + 1}/{STEPS_PER_EPOCH}"
    deadline = time.monotonic() + timeout
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return "".join(lines)
        assert time.monotonic() < deadline, "run too slow:\n" + "".join(lines)[-3000:]
    raise AssertionError(f"run ended before step {global_step}: rc={proc.wait()}\n{''.join(lines)}")


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [4, 21, 45])  # mid-epoch, at an epoch end, late
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, kill_at):
    run = tmp_path / "run"
    proc = _start([*RUN, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_step(proc, kill_at)
    proc.kill()  # SIGKILL: no handler runs, possibly in the middle of a checkpoint write
    proc.wait()
    resumed = run_cli([*RUN, "resume=auto", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (run / "train.log").read_text()
    _assert_identical(_final_weights(run), reference)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_saves_exits_75_and_resumes_exactly(tmp_path, reference, sig):
    run = tmp_path / "run"
    args = [*RUN, "checkpoint.every_n_steps=0", f"hydra.run.dir={run}"]  # only the signal saves
    proc = _start(args, tmp_path)
    _wait_for_step(proc, 10)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, output[-2000:]
    assert "continue with resume=auto" in output
    stopped_at = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["global_step"]
    assert 10 <= stopped_at < 3 * STEPS_PER_EPOCH
    resumed = run_cli([*args, "resume=auto"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _assert_identical(_final_weights(run), reference)


@pytest.mark.slow
def test_rerun_without_resume_never_overwrites_a_run(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"precious")
    result = run_cli(["experiment=quickstart", f"hydra.run.dir={run}"], cwd=tmp_path)
    assert result.returncode == 2 and "already holds a run" in result.stderr
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"precious"
    assert not (run / ".hydra").exists()


def _children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (torchrun's workers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _torchrun(args: list[str], cwd: Path, restarts: int = 0) -> subprocess.Popen:
    return subprocess.Popen(
        torchrun_command(["-m", "sam_train", *args], restarts),
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_two_processes_rank_killed_torchrun_restarts_and_resumes_exactly(tmp_path):
    args = [*RUN, "resume=auto"]
    reference_run = tmp_path / "reference"
    proc = _torchrun([*args, f"hydra.run.dir={reference_run}"], tmp_path)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]

    run = tmp_path / "killed"
    proc = _torchrun([*args, f"hydra.run.dir={run}"], tmp_path, restarts=1)
    output = _wait_for_step(proc, 30)
    workers = _children(proc.pid)
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # one rank dies; torchrun restarts the group
    output += proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, output[-5000:]
    assert "resumed from" in (run / "train.log").read_text(), output[-5000:]
    _assert_identical(_final_weights(run), _final_weights(reference_run))
