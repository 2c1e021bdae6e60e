"""Checkpoints: atomic writes, clear errors on load, ``resume=auto`` lookup."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sam_train.errors import CheckpointError

FORMAT_VERSION = 1
_MAGIC = "sam-train-checkpoint"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file, fsync, rename, fsync the folder.

    A crash at any point leaves either the previous file or the new one, never a torn file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"magic": _MAGIC, "format_version": FORMAT_VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp makes 0600; match a plain open()
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; raise CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # truncated zip, pickle garbage, foreign format
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch file: {err}") from err
    if not isinstance(state, dict) or state.get("magic") != _MAGIC:
        raise CheckpointError(f"{path} is not a sam-train checkpoint")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {state['format_version']}; this sam-train reads "
            f"up to {FORMAT_VERSION}"
        )
    return state


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """``None`` -> fresh start; ``auto`` -> this run's last.pt if present; else the given path."""
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / "checkpoints" / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file")
    return path
