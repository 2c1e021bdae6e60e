"""A full disk: at start one line and exit 2 (no tracebacks from the log handler); later, one
warning line and the log on the console only. The disk is a tiny tmpfs filled to the brim
(skipped where this process may not mount one) or ``/dev/full``, which refuses every write."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
from conftest import run_in_process

from sam_train.logfile import RunLogFile


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        with (mount / "filler").open("wb", buffering=0) as filler, pytest.raises(OSError):
            while True:
                filler.write(b"\0" * 4096)
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_at_start_is_one_line_and_exit_2(full_disk):
    run = full_disk / "run"
    code, err = run_in_process(
        ["experiment=quickstart", "trainer.epochs=1", f"hydra.run.dir={run}"]
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert line.startswith(f"sam-train: error: hydra.run.dir={run} is not writable")
    assert "No space left on device" in line


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_a_log_file_the_disk_refuses_warns_once_and_stops(capsys):
    handler = RunLogFile("/dev/full")
    logger = logging.getLogger("test_full_disk")
    logger.addHandler(handler)
    try:
        for number in range(3):
            logger.error("record %d", number)
    finally:
        logger.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "sam-train: warning: cannot write /dev/full (No space left on device): the log goes to "
        "the console only"
    ]


def test_the_log_file_is_opened_at_its_first_record_and_skips_console_only_ones(tmp_path):
    from sam_train.logfile import CONSOLE_ONLY

    path = tmp_path / "train.log"
    handler = RunLogFile(str(path))
    logger = logging.getLogger("test_full_disk.lazy")
    logger.addHandler(handler)
    try:
        logger.warning("for the console", extra=CONSOLE_ONLY)
        assert not path.exists()
        logger.warning("for the file")
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert Path(path).read_text().splitlines() == ["for the file"]
