"""Real processes killed, signalled or restarted continue exactly where they stopped: one
chain per launcher (a single process; torchrun with two workers). The in-process
equivalents of every stop and resume rule are in test_lifecycle.py."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from conftest import RESUMABLE, ForkedRun, fork_cli, run_in_process, start_torchrun

# QUICK's two epochs (a warm-up one, then the decay): a stop in the first, a kill in the second.
EPOCHS = 2
RUN = RESUMABLE
STEPS_PER_EPOCH = 21  # 1346 digits // 64
KILL_AT = STEPS_PER_EPOCH + 9  # a step of the second epoch


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert state["global_step"] == EPOCHS * STEPS_PER_EPOCH
    return state["model"]


def _assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The uninterrupted run, in this process (the same single thread as the children)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    code, err = run_in_process([*RUN, f"hydra.run.dir={run}"])
    assert code == 0, err
    return _final_weights(run)


def _wait_for_step(proc: ForkedRun, global_step: int, timeout: float = 300) -> str:
    """Read the progress lines until the run has taken ``global_step`` steps; return them."""
    epoch, step = divmod(global_step - 1, STEPS_PER_EPOCH)
    marker = f"epoch {epoch + 1}/{EPOCHS}  step {step + 1}/{STEPS_PER_EPOCH}"
    deadline = time.monotonic() + timeout
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return "".join(lines)
        assert time.monotonic() < deadline, "run too slow:\n" + "".join(lines)[-3000:]
    raise AssertionError(f"run ended before step {global_step}: rc={proc.wait()}\n{''.join(lines)}")


@pytest.mark.slow
def test_sigterm_then_sigkill_then_resume_is_bit_identical(tmp_path, reference):
    """SIGTERM: checkpoint and exit 75; SIGKILL (possibly inside a checkpoint write): no
    handler runs; each time ``resume=auto`` continues, and the end equals the reference.
    The runs are forked children of this process: real processes, signals and exit codes
    (``python -m sam_train`` itself is test_cli's), without 6 s of CPU for imports each."""
    run = tmp_path / "run"
    args = [*RUN, f"hydra.run.dir={run}"]
    proc = fork_cli(args, tmp_path)
    _wait_for_step(proc, 10)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate()
    assert proc.returncode == 75, output[-2000:]
    assert "stopped by SIGTERM" in output and "continue with resume=auto" in output
    assert "Traceback" not in output
    stopped_at = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["global_step"]
    assert 10 <= stopped_at <= 11, "a signal is acted on at the next step"

    proc = fork_cli([*args, "resume=auto"], tmp_path)
    _wait_for_step(proc, KILL_AT)
    proc.kill()
    assert proc.wait() == -signal.SIGKILL
    code, err = run_in_process([*args, "resume=auto"])
    assert code == 0, err
    assert not list((run / "checkpoints").glob(".*.tmp")), "a killed save's temp file is removed"
    assert (run / "train.log").read_text().count("resumed from") == 2
    _assert_identical(_final_weights(run), reference)


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


def _torchrun(args: list[str], cwd: Path, restarts: int = 0) -> ForkedRun:
    return start_torchrun(["-m", "sam_train", *args], cwd, restarts)


def _worker_pids(proc: ForkedRun, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while len(workers := _children(proc.pid)) < 2:
        assert time.monotonic() < deadline, "torchrun started no workers"
        time.sleep(0.5)
    return workers


@pytest.mark.slow
@pytest.mark.distributed
def test_torchrun_preempted_then_rank_killed_and_restarted_resumes_exactly(
    tmp_path, two_process_run
):
    """Under torchrun: SIGTERM to one worker stops every rank within a few steps (whatever
    ``log_every``), they checkpoint and exit 0, so torchrun neither reports FAILED nor
    restarts the group; then a killed rank makes torchrun restart the group, which resumes
    from the last checkpoint. The end equals an uninterrupted two-process run (the one
    test_distributed checks too)."""
    run = tmp_path / "stopped"
    quiet = [*RUN, "trainer.log_every=1000", f"hydra.run.dir={run}"]
    proc = _torchrun(quiet, tmp_path, restarts=1)
    workers = _worker_pids(proc)
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.pt").is_file():  # every_n_steps=1 writes it
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint written"
        time.sleep(0.2)
    os.kill(workers[-1], signal.SIGTERM)  # rank 1: rank 0 must hear of it from rank 1
    output = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-5000:]
    log = (run / "train.log").read_text()
    assert "another process received a stop signal" in log and "signal None" not in log
    assert "resumed from" not in log, "torchrun must not restart a preempted group"
    stopped_at = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["global_step"]
    assert stopped_at < EPOCHS * STEPS_PER_EPOCH

    proc = _torchrun([*RUN, "resume=auto", f"hydra.run.dir={run}"], tmp_path, restarts=1)
    output = _wait_for_step(proc, KILL_AT)
    os.kill(_worker_pids(proc)[-1], signal.SIGKILL)  # one rank dies; torchrun restarts
    output += proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-5000:]
    assert (run / "train.log").read_text().count("resumed from") == 2, output[-5000:]
    _assert_identical(_final_weights(run), _final_weights(two_process_run))
