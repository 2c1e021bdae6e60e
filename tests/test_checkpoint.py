"""Checkpoint files: atomic writes, a full disk, corrupt and foreign files, mismatched models."""

from __future__ import annotations

import errno
import os

import pytest
import torch
from torch import nn

from sam_train import checkpoint as ckpt
from sam_train.checkpoint import (
    CheckpointWriter,
    load_checkpoint,
    load_model_state,
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
    with pytest.raises(CheckpointError, match=r"No space left on device.*previous checkpoint"):
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
        writer.save(_state(step), is_best=step == 3)
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
