"""Checkpoint files: atomic writes, a full disk, corrupt and foreign files, mismatched models,
independent snapshots, and the resume lookup that falls back past an unreadable last.pt."""

from __future__ import annotations

import errno
import io
import logging
import os

import pytest
import torch
from torch import nn

from sam_train import checkpoint as ckpt
from sam_train.checkpoint import (
    CheckpointWriter,
    find_resumable,
    load_checkpoint,
    load_model_state,
    load_resume,
    resolve_resume,
    save_checkpoint,
)
from sam_train.errors import CheckpointError


def _state(step: int = 1) -> dict:
    torch.manual_seed(step)
    return {"model": nn.Linear(4, 2).state_dict(), "global_step": step}


def test_round_trip_adds_magic_and_version(tmp_path):
    path = save_checkpoint(_state(), tmp_path / "last.pt")
    state = load_checkpoint(path)
    assert state["format_version"] == ckpt.FORMAT_VERSION and state["global_step"] == 1
    assert oct(path.stat().st_mode & 0o777) != oct(0o600), "readable like any other output file"


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    writer = CheckpointWriter(tmp_path)
    writer.save(_state(1))

    def full_disk(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous version"):
        writer.save(_state(2))
    monkeypatch.undo()
    assert load_checkpoint(writer.last)["global_step"] == 1
    assert [p.name for p in writer.folder.iterdir()] == ["last.pt"], "no temp file left behind"


@pytest.mark.parametrize("kind", ["truncated", "garbage", "foreign", "text", "empty", "missing"])
def test_unusable_files_raise_one_clear_error(tmp_path, kind):
    good = save_checkpoint(_state(), tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        bad.write_bytes(os.urandom(4096))
    elif kind == "foreign":
        torch.save({"state_dict": nn.Linear(2, 2).state_dict()}, bad)
    elif kind == "text":
        bad.write_text("model: resnet\n")
    elif kind == "empty":
        bad.write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_model_mismatch_names_the_keys(tmp_path):
    state = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)).state_dict()
    other = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(CheckpointError) as err:
        load_model_state(other, state, tmp_path / "x.pt")
    message = str(err.value)
    assert "missing: 2.bias, 2.weight" in message
    assert "shape: 0.bias (3,) vs (5,)" in message


def test_keep_last_bounds_the_history(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=2)
    for step in range(1, 6):
        writer.save(_state(step), best=step == 3)
    names = sorted(p.name for p in writer.folder.iterdir())
    assert names == ["best.pt", "last.pt", "step_000000004.pt", "step_000000005.pt"]
    assert load_checkpoint(writer.folder / "best.pt")["global_step"] == 3
    assert load_checkpoint(writer.folder / "step_000000004.pt")["global_step"] == 4


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing yet: a fresh start
    writer = CheckpointWriter(tmp_path)
    writer.save(_state())
    assert resolve_resume("auto", tmp_path) == writer.last
    assert resolve_resume(str(writer.last), tmp_path / "elsewhere") == writer.last
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        resolve_resume(str(tmp_path / "nope.pt"), tmp_path)


def _damage(path) -> None:
    """Overwrite a file's bytes in place (a disk error, a stray write): every link sees it."""
    with open(path, "r+b") as handle:
        handle.write(os.urandom(path.stat().st_size))


def test_snapshots_and_best_are_independent_of_last(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=2)
    written = writer.save(_state(7), best=True)
    assert written == [writer.last, writer.best, writer.snapshot(7)]
    _damage(writer.last)
    with pytest.raises(CheckpointError):
        load_checkpoint(writer.last)
    for other in written[1:]:
        assert load_checkpoint(other)["global_step"] == 7, other.name


class _DiskFullAfter(io.FileIO):
    """A real file whose writes fail with ENOSPC once ``limit`` bytes are on disk."""

    limit = 0

    def write(self, data) -> int:
        if self.tell() + len(data) > self.limit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("limit", [0, 100, 3000])  # the header, the first record, a tensor
def test_a_full_disk_inside_torch_save_is_a_checkpoint_error(tmp_path, monkeypatch, limit):
    writer = CheckpointWriter(tmp_path)
    writer.save(_state(1))
    _DiskFullAfter.limit = limit
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        if mode != "wb":
            return real_fdopen(fd, mode, *args, **kwargs)
        return io.BufferedWriter(_DiskFullAfter(fd, "wb"), buffer_size=64)

    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    big = {"model": {"w": torch.randn(2000)}, "global_step": 2}
    with pytest.raises(CheckpointError) as err:
        writer.save(big)
    monkeypatch.undo()
    message = str(err.value)
    assert "No space left on device" in message and str(writer.last) in message
    assert "\n" not in message
    assert load_checkpoint(writer.last)["global_step"] == 1
    assert [p.name for p in writer.folder.iterdir()] == ["last.pt"], "no temp file left behind"


def test_a_file_named_checkpoints_is_refused_when_the_writer_is_created(tmp_path):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(CheckpointError, match="is a file, not a folder") as err:
        CheckpointWriter(tmp_path)
    assert str(tmp_path / "checkpoints") in str(err.value)


def test_temp_files_of_a_killed_save_are_removed(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [folder / ".last.pt.k2j3h4.tmp", folder / ".step_000000004.pt.x9.tmp"]
    for path in stale:
        path.write_bytes(b"PK" * 1000)
    kept = save_checkpoint(_state(3), folder / "last.pt")
    CheckpointWriter(tmp_path)
    assert not any(path.exists() for path in stale)
    assert load_checkpoint(kept)["global_step"] == 3


def test_save_writes_exactly_the_files_asked_for(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=3)
    assert writer.save(_state(5), last=False, best=True, snapshot=False) == [writer.best]
    assert not writer.last.exists(), "save_last=false: only best.pt"
    assert writer.save(_state(6), snapshot=False) == [writer.last]
    assert writer.save(_state(7), last=False) == [writer.snapshot(7)]
    assert sorted(p.name for p in writer.folder.iterdir()) == [
        "best.pt",
        "last.pt",
        "step_000000007.pt",
    ]
    assert load_checkpoint(writer.last)["global_step"] == 6
    assert writer.save(_state(8), last=False, snapshot=False) == []


def _run_with_history(tmp_path):
    writer = CheckpointWriter(tmp_path, keep_last=3)
    for step in (10, 20, 30):
        writer.save(_state(step), best=step == 10)
    return writer


def test_find_resumable_falls_back_to_the_newest_loadable_file(tmp_path, caplog):
    writer = _run_with_history(tmp_path)
    writer.last.write_bytes(writer.last.read_bytes()[:100])  # torn by a failing disk
    _damage(writer.snapshot(30))
    with caplog.at_level(logging.WARNING, logger="sam_train"):
        found = find_resumable(tmp_path)
    assert found.path == writer.snapshot(20) and found.state["global_step"] == 20
    assert [entry.split(" ")[0] for entry in found.skipped] == ["last.pt", "step_000000030.pt"]
    assert "resuming from" in caplog.text and "step_000000020.pt" in caplog.text


def test_find_resumable_prefers_last_and_orders_by_the_step_inside(tmp_path):
    writer = _run_with_history(tmp_path)
    found = find_resumable(tmp_path)
    assert (found.path, found.skipped) == (writer.last, ())
    writer.save(_state(40), last=False, best=True, snapshot=False)  # save_last=false
    assert find_resumable(tmp_path).path == writer.best, "best.pt holds the newest step"


def test_find_resumable_with_nothing_or_nothing_loadable(tmp_path):
    assert find_resumable(tmp_path) is None
    (tmp_path / "checkpoints").mkdir()
    assert find_resumable(tmp_path) is None
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    (tmp_path / "checkpoints" / "best.pt").write_text("text")
    with pytest.raises(CheckpointError) as err:
        find_resumable(tmp_path)
    message = str(err.value)
    assert "best.pt" in message and "last.pt" in message and "\n" not in message


def test_load_resume(tmp_path):
    assert load_resume(None, tmp_path) is None
    assert load_resume("auto", tmp_path) is None
    writer = _run_with_history(tmp_path)
    _damage(writer.last)
    assert load_resume("auto", tmp_path).path == writer.snapshot(30)
    explicit = load_resume(str(writer.best), tmp_path / "elsewhere")
    assert (explicit.path, explicit.state["global_step"]) == (writer.best, 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_resume(str(writer.last), tmp_path)
