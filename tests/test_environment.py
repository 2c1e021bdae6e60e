"""The machine around a run: leftover launcher variables, a full disk, odd folder names.
Each ends in one line and exit code 2 (or just works), through the real entry point."""

from __future__ import annotations

import errno
import io
import os
import socket
from pathlib import Path

import pytest
from conftest import QUICK, run_in_process

import sam_train.checkpoint as checkpoint_module
import sam_train.cli as cli_module

QUIET = [*QUICK, "trainer.log_every=100"]  # one progress line per epoch


def _assert_one_line(err: str, fragment: str) -> None:
    assert fragment in err, err
    assert "Traceback" not in err and err.count("error:") == 1, err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_leftover_rank_without_master_addr_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    code, err = run_in_process([*QUIET, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    _assert_one_line(err, "MASTER_ADDR and MASTER_PORT not: launch with torchrun")


def test_leftover_rank_with_an_address_times_out_with_one_line(monkeypatch, tmp_path):
    """Without a timeout this waits 30 minutes for a rank 0 that never comes."""
    port = _free_port()
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SAM_TRAIN_RENDEZVOUS_TIMEOUT", "2")
    code, err = run_in_process([*QUIET, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    _assert_one_line(err, f"could not join the process group at 127.0.0.1:{port} within 2 s")


def test_a_working_directory_that_is_not_utf8_loses_no_log_line(monkeypatch, tmp_path):
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    monkeypatch.chdir(folder)
    code, err = run_in_process([*QUIET, "hydra.run.dir=run"])
    assert code == 0, err
    assert "Logging error" not in err and "Traceback" not in err
    log = (folder / "run" / "train.log").read_text()
    assert "epoch 2/2  train loss" in log and "done in" in log and "results in" in log


def test_a_full_disk_when_the_run_folder_is_prepared_is_one_line(monkeypatch, tmp_path):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cli_module.OmegaConf, "save", full_disk)
    code, err = run_in_process([*QUIET, f"hydra.run.dir={tmp_path / 'run'}"])
    assert code == 2
    _assert_one_line(err, "/.hydra: No space left on device")


class _FullAfter(io.FileIO):
    """A checkpoint file whose writes fail once 100 bytes are on disk."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 100:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(monkeypatch, tmp_path):
    real_fdopen = os.fdopen
    writes = {"count": 0}

    def fdopen(fd, mode="r", *args, **kwargs):
        if mode == "wb":
            writes["count"] += 1
            if writes["count"] > 2:  # epoch 1's last.pt and best.pt, then the disk is full
                return io.BufferedWriter(_FullAfter(fd, "wb"), buffer_size=64)
        return real_fdopen(fd, mode, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.os, "fdopen", fdopen)
    run = tmp_path / "run"
    code, err = run_in_process([*QUIET, f"hydra.run.dir={run}"])
    assert code == 2
    _assert_one_line(err, "No space left on device; its previous version is intact")
    monkeypatch.undo()
    assert checkpoint_module.load_checkpoint(run / "checkpoints" / "last.pt")["global_step"] == 21


def test_a_checkpoints_file_is_found_before_training(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").write_text("not a folder")
    code, err = run_in_process([*QUIET, f"hydra.run.dir={run}"])
    assert code == 2
    _assert_one_line(err, "checkpoints is a file, not a folder")
    assert "step " not in (run / "train.log").read_text(), "no step may run first"


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_output_streams_escape_what_they_cannot_encode(monkeypatch, stream):
    raw = io.BytesIO()
    text = io.TextIOWrapper(raw, encoding="utf-8")
    monkeypatch.setattr(cli_module.sys, stream, text)
    cli_module._escape_unencodable_output()
    print("/tmp/caf\udce9", file=text, flush=True)
    assert raw.getvalue() == b"/tmp/caf\\udce9\n"
