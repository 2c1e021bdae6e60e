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


def rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states (data order is seeded by epoch)."""
    import random

    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in states["cuda"]])


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load weights, naming the keys that do not match the configured model."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in set(own) & set(state)
        if state[key].shape != own[key].shape
    )
    problems = [
        f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the configured model ({'; '.join(problems)})"
        )
    model.load_state_dict(state)


class CheckpointWriter:
    """Writes ``last.pt``, ``best.pt`` and a bounded history under ``<run>/checkpoints``.

    Only rank 0 constructs one. A failed write (full disk) raises CheckpointError and leaves
    the previous files intact.
    """

    def __init__(self, run_dir: Path, *, keep_last: int = 0) -> None:
        self.folder = Path(run_dir) / "checkpoints"
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.folder / "last.pt"

    def _write(self, state: dict[str, Any], path: Path) -> None:
        try:
            save_checkpoint(state, path)
        except OSError as err:
            raise CheckpointError(
                f"could not write checkpoint {path}: {err}; the previous checkpoint is intact"
            ) from err

    def save(self, state: dict[str, Any], *, is_best: bool = False) -> None:
        self._write(state, self.last)
        if is_best:
            self._write(state, self.folder / "best.pt")
        if self.keep_last > 0:
            history = self.folder / f"step_{state['global_step']:09d}.pt"
            history.unlink(missing_ok=True)
            os.link(self.last, history)  # same bytes, no second write
            for old in sorted(self.folder.glob("step_*.pt"))[: -self.keep_last]:
                old.unlink()
