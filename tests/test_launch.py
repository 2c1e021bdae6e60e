"""``sam-train ... trainer.nproc_per_node=2``: torch's elastic agent starts the workers, and
the launcher exits with sam-train's codes and no torch traceback: 2 for a worker's user error
(its one line), 75 for a preempted worker or a SIGTERM to the agent, 130 for Ctrl-C, each
stop with a checkpoint to resume from. Real processes (gloo, 2 workers, digits), so few and
with generous timeouts; the signal tests wait for a logged step before signalling."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from conftest import ForkedRun, fork_cli
from test_resume import _children

from sam_train.launch import exit_code, split_nproc

LONG = [
    "experiment=quickstart",
    "trainer.epochs=30",
    "scheduler.warmup_epochs=1",
    "trainer.log_every=1",
    "logger=none",
    "trainer.nproc_per_node=2",
]
TIMEOUT = 600  # two workers importing torch on a loaded 2-core machine


def _start(args: list[str], cwd: Path) -> ForkedRun:
    """The launcher in a session of its own: a signal sent to it reaches the agent only,
    as a scheduler's does (a terminal's Ctrl-C too: the workers run in their own session).
    A forked child of this process: the launcher's imports (2.4 s of CPU) are not paid
    again; its workers are new interpreters, as always."""
    return fork_cli(args, cwd, stderr_only=True, new_session=True)


def _wait_for_training(run: Path, proc: ForkedRun) -> None:
    deadline = time.monotonic() + TIMEOUT
    log = run / "train.log"
    while not (log.is_file() and "step " in log.read_text(errors="replace")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no training step logged"
        time.sleep(0.5)


def _finish(proc: ForkedRun) -> tuple[int, str]:
    err = proc.communicate(timeout=TIMEOUT)
    return proc.returncode, err


def test_nproc_is_read_by_the_launcher_and_checked():
    assert split_nproc(["a=1", "trainer.nproc_per_node=4", "b=2"]) == (4, ["a=1", "b=2"])
    assert split_nproc(["a=1"]) == (None, ["a=1"])
    assert exit_code([75, -15]) == 75 and exit_code([-15, 2]) == 2 and exit_code([1]) == 1
    assert exit_code([130, 75]) == 130


@pytest.mark.parametrize("value", ["0", "two"])
def test_a_bad_process_count_is_one_line(value, capsys):
    with pytest.raises(SystemExit) as stop:
        split_nproc([f"trainer.nproc_per_node={value}"])
    assert stop.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"sam-train: error: trainer.nproc_per_node={value}: expected")


@pytest.mark.slow
@pytest.mark.distributed
def test_a_workers_user_error_is_its_one_line_and_exit_2(tmp_path):
    args = ["experiment=quickstart", "trainer.epochs=0", "trainer.nproc_per_node=2"]
    code, err = _finish(_start([*args, f"hydra.run.dir={tmp_path / 'run'}"], tmp_path))
    assert code == 2
    assert err.strip().splitlines() == ["sam-train: error: trainer.epochs must be > 0, got 0"]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize(
    ("target", "sig", "expected"),
    [
        ("worker", signal.SIGTERM, 75),
        ("agent", signal.SIGTERM, 75),
        ("agent", signal.SIGINT, 130),  # what a terminal's Ctrl-C sends the agent
    ],
)
def test_a_stop_checkpoints_and_exits_with_sam_trains_code(tmp_path, target, sig, expected):
    run = tmp_path / "run"
    proc = _start([*LONG, f"hydra.run.dir={run}"], tmp_path)
    _wait_for_training(run, proc)
    pid = proc.pid
    if target == "worker":
        pid = max(_children(proc.pid))  # one of the workers the agent started
    os.kill(pid, sig)
    code, err = _finish(proc)
    assert code == expected, err
    assert "Traceback" not in err and "ChildFailedError" not in err, err
    assert (run / "checkpoints" / "last.pt").is_file()
    assert "continue with resume=auto" in err


def test_a_rank_whose_rendezvous_times_out_says_one_line_without_cpp_output(monkeypatch, capfd):
    """RANK=1 of 2 with no rank 0: c10d's C++ retries (with their stack frames) are not
    shown, the ConfigError line is all there is."""
    import socket

    from sam_train.errors import ConfigError
    from sam_train.strategy import process_group

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in {**env, process_group.RENDEZVOUS_TIMEOUT_ENV: "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    with pytest.raises(ConfigError, match=f"rank 1 of 2 could not join .* at 127.0.0.1:{port}"):
        process_group.init_distributed()
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""
