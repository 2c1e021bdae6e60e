"""Run folders: which files mean a run's work, the checks before a run starts, the lock."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys

import pytest

from sam_train import run_folder
from sam_train.errors import RunFolderBusy, RunFolderError
from sam_train.run_folder import RunLock, check_run_folder, find_artifacts

ARTIFACTS = [
    "checkpoints/last.pt",
    "checkpoints/step_000000040.pt",
    "results.json",
    "metrics.csv",
    "events.out.tfevents.1700000000.host.123.0",
]
NOT_ARTIFACTS = [".hydra/config.yaml", "train.log", ".lock", "checkpoints/.last.pt.x1.tmp"]


def _touch(root, *names):
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")


def test_find_artifacts_sees_work_not_hydra_output(tmp_path):
    _touch(tmp_path, *NOT_ARTIFACTS)
    assert find_artifacts(tmp_path) == []
    _touch(tmp_path, *ARTIFACTS)
    assert find_artifacts(tmp_path) == sorted(tmp_path / name for name in ARTIFACTS)


def test_check_creates_a_missing_folder(tmp_path):
    run_dir = tmp_path / "a" / "b"
    check_run_folder(run_dir, resume=None)
    assert run_dir.is_dir() and list(run_dir.iterdir()) == [], "the probe file is gone"


@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_a_fresh_start_into_a_folder_with_work_is_refused(tmp_path, artifact):
    _touch(tmp_path, ".hydra/config.yaml", artifact)
    with pytest.raises(RunFolderError) as err:
        check_run_folder(tmp_path, resume=None)
    message = str(err.value)
    assert artifact in message and "resume=auto" in message and "\n" not in message


def test_the_message_lists_three_artifacts(tmp_path):
    _touch(tmp_path, *ARTIFACTS)
    with pytest.raises(RunFolderError) as err:
        check_run_folder(tmp_path, resume=None)
    assert sum(name in str(err.value) for name in ARTIFACTS) == 3
    assert f"and {len(ARTIFACTS) - 3} more" in str(err.value)


def test_resuming_this_folder_is_allowed_another_runs_checkpoint_is_not(tmp_path):
    run_dir, other = tmp_path / "run", tmp_path / "other"
    _touch(run_dir, "checkpoints/last.pt", "results.json")
    _touch(other, "checkpoints/last.pt")
    check_run_folder(run_dir, resume="auto")
    check_run_folder(run_dir, resume=str(run_dir / "checkpoints" / "last.pt"))
    with pytest.raises(RunFolderError, match="is not this folder's checkpoint"):
        check_run_folder(run_dir, resume=str(other / "checkpoints" / "last.pt"))
    check_run_folder(tmp_path / "fresh", resume=str(other / "checkpoints" / "last.pt"))


def test_an_unwritable_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="not writable") as err:
        check_run_folder(tmp_path / "file" / "run", resume=None)
    assert str(tmp_path / "file" / "run") in str(err.value)


def test_a_second_holder_is_refused_with_the_owner(tmp_path):
    with RunLock(tmp_path) as lock:
        assert lock.held
        with pytest.raises(RunFolderBusy) as err:
            RunLock(tmp_path).acquire()
        message = str(err.value)
        assert f"pid {os.getpid()} on {socket.gethostname()}" in message
        assert str(tmp_path) in message and "hydra.run.dir" in message
    RunLock(tmp_path).acquire().release()


def test_the_lock_is_released_when_the_run_raises(tmp_path):
    with pytest.raises(KeyError), RunLock(tmp_path):
        raise KeyError("boom")
    with RunLock(tmp_path) as lock:
        assert lock.held


_HOLDER = (
    "import sys; from sam_train.run_folder import RunLock; "
    "RunLock(sys.argv[1]).acquire(); print('locked', flush=True); sys.stdin.read()"
)


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline() == "locked\n"
        with pytest.raises(RunFolderBusy, match=f"pid {child.pid} "):
            RunLock(tmp_path).acquire()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with RunLock(tmp_path) as lock:
        assert lock.held


def test_a_file_system_without_flock_fails_fast(tmp_path, monkeypatch):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(run_folder.fcntl, "flock", no_locks)
    with pytest.raises(RunFolderError, match="does not support flock") as err:
        RunLock(tmp_path).acquire()
    assert not isinstance(err.value, RunFolderBusy)
