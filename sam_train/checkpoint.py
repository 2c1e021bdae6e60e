"""The checkpoint format, written and read side by side: its keys (declared once, here), the
payload the ``Checkpointing`` callback writes, the restore a resume does, and the readers
``sam-eval`` and ``model.init_from`` use; atomic writes that keep the previous file on any
failure, clear errors on load, and the ``resume=auto`` lookup that falls back past an
unreadable ``last.pt``."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import torch

from sam_train.errors import CheckpointError
from sam_train.paths import expect_file
from sam_train.run_folder import CHECKPOINTS_DIR
from sam_train.state import RunState

if TYPE_CHECKING:
    from sam_train.run import Run
    from sam_train.trainer import Callback

FORMAT_VERSION = 1
MAGIC = "sam-train-checkpoint"  # at MAGIC_KEY, with the version at VERSION_KEY
MAGIC_KEY, VERSION_KEY = "magic", "format_version"
# The top-level keys of a checkpoint (a dict, torch.save'd).
MODEL = "model"  # the model's full state dict
OPTIMIZER = "optimizer"  # the (SAM) optimizer's, the base optimizer's state inside
SCHEDULER = "scheduler"  # written for readers; a resume rebuilds the schedule (see restore)
SCALER = "scaler"  # fp16's GradScaler, else None
GLOBAL_STEP = "global_step"
EPOCH = "epoch"  # completed epochs
RUN_STATE = "run_state"  # RunState.to_dict()
CALLBACKS = "callbacks"  # {Callback.state_key: its state_dict()}
CONFIG = "config"  # the resolved config, compared with the next one on resume
RNG = "rng"  # every process's rng_states(), by rank
RANK_BUFFERS = "rank_buffers"  # every process's buffers (norm statistics) under DDP, else None
#: ModelEMA's ``state_key``: the EMA weights are at ``checkpoint[CALLBACKS][EMA][EMA_WEIGHTS]``.
#: The callback's old class name, so checkpoints written before state keys existed load.
EMA = "ModelEMA"
EMA_WEIGHTS = "module"
#: Checkpointing's ``state_key``: the ranking of the ``keep_best`` checkpoints it keeps.
CHECKPOINTING = "Checkpointing"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
_SNAPSHOT = re.compile(r"step_(\d+)\.pt")  # step_000000040.pt: the history kept by keep_last
_TOP = re.compile(r"best_step_(\d+)\.pt")  # best_step_000000040.pt: the keep_best epochs
_TEMP_GLOB = ".*.tmp"  # what _atomic_write's mkstemp names look like
_COPY_CHUNK = 16 << 20

log = logging.getLogger("sam_train")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file, fsync, rename, fsync the folder.

    A crash at any point leaves either the previous file or the new one, never a torn file.
    A failed write (full disk, I/O error) raises the OSError that caused it.
    """
    payload = {MAGIC_KEY: MAGIC, VERSION_KEY: FORMAT_VERSION, **state}
    return _atomic_write(Path(path), lambda handle: _torch_save(payload, handle))


def _atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Run ``write(handle)`` into a temp file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~current_umask())  # mkstemp makes 0600; match a plain open()
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


class _WriteRecorder:
    """A file wrapper that remembers the OSError a ``write`` raised."""

    def __init__(self, handle: IO[bytes]) -> None:
        self.handle = handle
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        try:
            self.handle.flush()
        except OSError as err:
            self.error = err
            raise


def _torch_save(payload: dict[str, Any], handle: IO[bytes]) -> None:
    """``torch.save`` whose failed writes surface as the OSError behind them.

    torch's zip writer turns a failed ``write`` (ENOSPC, EIO) into
    ``RuntimeError('... unexpected pos 64 vs 0')``; the OSError says what to fix.
    """
    recorder = _WriteRecorder(handle)
    try:
        torch.save(payload, recorder)
    except RuntimeError as err:
        if recorder.error is None:
            raise
        raise recorder.error from err


def _copy_file(source: Path, path: Path) -> Path:
    """An independent, atomic byte copy of ``source`` (a second file, not a second link)."""
    with source.open("rb") as src:
        return _atomic_write(path, lambda handle: shutil.copyfileobj(src, handle, _COPY_CHUNK))


def current_umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by ``save_checkpoint``; raise CheckpointError otherwise."""
    return _load(Path(path), map_location, mmap=False)


def _load(path: Path, map_location: str | torch.device, *, mmap: bool) -> dict[str, Any]:
    """``load_checkpoint``; ``mmap=True`` maps tensors lazily, to read metadata cheaply."""
    problem = expect_file(path)  # a run folder given for its checkpoint is named as one
    if problem is not None:
        raise CheckpointError(f"checkpoint {problem}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap)
    except Exception as err:  # truncated zip, pickle garbage, foreign format
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a torch file: {_one_line(err)}"
        ) from err
    if not is_checkpoint(state):
        raise CheckpointError(f"{path} is not a sam-train checkpoint")
    if state.get(VERSION_KEY, 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {state[VERSION_KEY]}; this sam-train reads "
            f"up to {FORMAT_VERSION}"
        )
    return state


def resolve_resume(resume: str | None, run_dir: Path) -> Path | None:
    """``None`` -> fresh start; ``auto`` -> this run's last.pt if present; else the given path.

    Prefer :func:`load_resume`, whose ``auto`` falls back past an unreadable last.pt.
    """
    if resume is None:
        return None
    if resume == "auto":
        last = run_dir / CHECKPOINTS_DIR / LAST_NAME
        return last if last.is_file() else None
    path = Path(resume)
    if not path.is_file():
        raise CheckpointError(f"resume={resume}: no such checkpoint file")
    return path


@dataclass(frozen=True)
class Resumable:
    """The checkpoint a run continues from, its loaded state, and the files passed over."""

    path: Path
    state: dict[str, Any]
    skipped: tuple[str, ...] = ()  # "last.pt (why it could not be read)", newest first


def find_resumable(run_dir: Path, map_location: str | torch.device = "cpu") -> Resumable | None:
    """The newest loadable checkpoint in ``<run_dir>/checkpoints``, or None if there is none.

    Every ``*.pt`` there (last.pt, best.pt, step_*.pt) is a candidate, newest first by the
    ``global_step`` it holds (last.pt first among equals): an unreadable last.pt falls back
    to a snapshot, and a best.pt written after the last last.pt (``save_last=false``) wins.
    Skipped files are logged as one warning and listed in ``skipped``. Raises
    CheckpointError, listing them, when files exist but none loads.
    """
    folder = Path(run_dir) / CHECKPOINTS_DIR
    files = sorted(folder.glob("*.pt")) if folder.is_dir() else []
    skipped: list[str] = []
    ranked: list[tuple[int, bool, Path]] = []
    for path in files:
        try:  # tensors memory-mapped: reading global_step costs milliseconds
            step = _load(path, "cpu", mmap=True).get(GLOBAL_STEP, -1)
        except CheckpointError as err:
            skipped.append(f"{path.name} ({err})")
            continue
        ranked.append((step, path.name == LAST_NAME, path))
    for _, _, path in sorted(ranked, key=lambda item: item[:2], reverse=True):
        try:
            state = load_checkpoint(path, map_location)
        except CheckpointError as err:
            skipped.append(f"{path.name} ({err})")
            continue
        if skipped:
            log.warning("skipped %s; resuming from %s", "; ".join(skipped), path)
        return Resumable(path, state, tuple(skipped))
    if skipped:
        raise CheckpointError(f"no checkpoint in {folder} can be loaded: {'; '.join(skipped)}")
    return None


def load_resume(
    resume: str | None, run_dir: Path, map_location: str | torch.device = "cpu"
) -> Resumable | None:
    """What ``resume=`` asks for: None -> fresh start; ``auto`` -> :func:`find_resumable`
    (None when the folder has no checkpoint yet); a path -> that file, or CheckpointError."""
    if resume == "auto":
        return find_resumable(run_dir, map_location)
    path = resolve_resume(resume, run_dir)
    return None if path is None else Resumable(path, load_checkpoint(path, map_location))


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


def load_model_state(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    load: Callable[[torch.nn.Module, dict[str, torch.Tensor]], None] | None = None,
) -> None:
    """Load weights, naming the keys that do not match the configured model; ``load`` is the
    strategy's loader (FSDP shards the whole tensors), else ``model.load_state_dict``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = sorted(
        f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
        for key in set(own) & set(state)
        if state[key].shape != own[key].shape
    )
    problems = [
        f"{label}: {', '.join(keys[:4])}{f' and {len(keys) - 4} more' if len(keys) > 4 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", mismatched))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"checkpoint {path} does not match the configured model ({'; '.join(problems)})"
        )
    if load is None:
        model.load_state_dict(state)
    else:
        load(model, state)


# ---------------------------------------------------------------------------- the format
def build_payload(
    run: Run, state: RunState, callbacks: Sequence[Callback], config: dict[str, Any]
) -> dict[str, Any] | None:
    """What a checkpoint holds, on rank 0 (None elsewhere).

    Every process calls it: gathering the RNG and norm statistics, and FSDP's full state
    dicts, are collectives. Called after the base step, so never with the weights w + eps.
    """
    strategy = run.strategy
    rngs = strategy.gather_object(rng_states())
    buffers = None
    if strategy.distributed:  # replicas keep their own norm statistics between evaluations
        own = {name: b.detach().cpu() for name, b in run.model.named_buffers()}
        buffers = strategy.gather_object(own)
    model_state = strategy.model_state_dict(run.model)
    optimizer_state = strategy.optimizer_state_dict(run.model, run.optimizer)
    if not strategy.is_main:
        return None
    return {
        MODEL: model_state,
        OPTIMIZER: optimizer_state,
        SCHEDULER: run.scheduler.state_dict(),
        SCALER: run.scaler.state_dict() if run.scaler is not None else None,
        GLOBAL_STEP: state.global_step,
        EPOCH: state.epoch(run.steps_per_epoch),
        RUN_STATE: state.to_dict(),
        CALLBACKS: callback_states(callbacks),
        CONFIG: config,
        RNG: rngs,
        RANK_BUFFERS: buffers,
    }


def callback_states(callbacks: Sequence[Callback]) -> dict[str, Any]:
    """``{state_key: state_dict()}`` of the callbacks that carry state across a resume."""
    states: dict[str, Any] = {}
    for callback in callbacks:
        own = callback.state_dict()
        if own is None:
            continue
        key = callback.state_key
        if not key or key in states:
            raise TypeError(f"{type(callback).__name__} needs a state_key of its own")
        states[key] = own
    return states


def restore(
    run: Run, path: Path, callbacks: Sequence[Callback], *, changed: tuple[str, ...] = ()
) -> RunState:
    """Load a checkpoint into the built run; the schedule follows from the config and the step.

    The scheduler's saved state is not loaded: timm's schedules are functions of the update
    count, and their state holds the old length, which would override a grown
    ``trainer.epochs`` (every new step at the final lr). ``changed`` lists the config keys a
    ``resume_strict=false`` resume accepted: the new optimizer hyper-parameters win over the
    saved ones, and another optimizer or SAM variant starts its state fresh.
    """
    checkpoint = load_checkpoint(path, map_location=run.device)
    load_model_state(run.model, checkpoint[MODEL], path, load=run.strategy.load_model_state_dict)
    _restore_optimizer(run, checkpoint[OPTIMIZER], path, changed)
    if run.scaler is not None and checkpoint.get(SCALER):
        run.scaler.load_state_dict(checkpoint[SCALER])
    state = run_state(checkpoint)
    run.scheduler.step_update(num_updates=state.global_step)
    _restore_process(run, checkpoint)
    saved = checkpoint.get(CALLBACKS, {})
    for callback in callbacks:
        if callback.state_key in saved:
            callback.load_state_dict(saved[callback.state_key])
    log.info("resumed from %s at step %d", path, state.global_step)
    return state


def _restore_optimizer(run: Run, saved: dict, path: Path, changed: tuple[str, ...]) -> None:
    if {"optimizer.name", "sam.name"} & set(changed):
        log.warning("optimizer state in %s is for another optimizer: starting it fresh", path)
        return
    configured = [{k: v for k, v in g.items() if k != "params"} for g in run.optimizer.param_groups]
    try:
        run.strategy.load_optimizer_state_dict(run.model, run.optimizer, saved)
    except (KeyError, ValueError) as err:
        raise CheckpointError(f"optimizer state in {path} does not fit: {err}") from err
    if any(key.startswith(("optimizer.", "sam.")) for key in changed):
        for group, values in zip(run.optimizer.param_groups, configured, strict=True):
            group.update(values)


def _restore_process(run: Run, checkpoint: dict[str, Any]) -> None:
    """This process's RNG and norm statistics, when the checkpoint has as many processes."""
    strategy = run.strategy
    if len(checkpoint[RNG]) != strategy.world_size:
        return
    set_rng_states(checkpoint[RNG][strategy.rank])
    rank_buffers = (checkpoint.get(RANK_BUFFERS) or [None] * strategy.world_size)[strategy.rank]
    if rank_buffers is not None:
        own = dict(run.model.named_buffers())
        with torch.no_grad():
            for name, value in rank_buffers.items():
                own[name].copy_(value)


def run_state(checkpoint: dict[str, Any]) -> RunState:
    """The RunState a checkpoint holds (older checkpoints kept only the step and the best)."""
    if RUN_STATE in checkpoint:
        return RunState.from_dict(checkpoint[RUN_STATE])
    return RunState(
        global_step=checkpoint[GLOBAL_STEP],
        best=checkpoint.get("best", RunState().best),
        skipped_steps=checkpoint.get("skipped_steps", 0),
    )


def is_checkpoint(loaded: object) -> bool:
    """Whether an object ``torch.load`` returned is a sam-train checkpoint."""
    return isinstance(loaded, dict) and loaded.get(MAGIC_KEY) == MAGIC


def saved_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The resolved config the run was trained with, or None when it holds none."""
    config = checkpoint.get(CONFIG)
    return config if isinstance(config, dict) else None


def ema_weights(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """The EMA's weights (the model's keys), or None when the run had no EMA."""
    ema = (checkpoint.get(CALLBACKS) or {}).get(EMA) or {}
    return ema.get(EMA_WEIGHTS)


class CheckpointWriter:
    """Writes ``last.pt``, ``best.pt`` and a bounded ``step_*.pt`` history under
    ``<run>/checkpoints``.

    Only rank 0 constructs one, while it holds the run folder's lock (run_folder.RunLock):
    temp files left there by a killed save are then known to be dead and are removed. A
    failed write (full disk) raises CheckpointError and leaves that file's previous version.
    """

    def __init__(self, run_dir: Path, *, keep_last: int = 0) -> None:
        self.folder = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last
        if self.folder.exists() and not self.folder.is_dir():
            raise CheckpointError(f"{self.folder} is a file, not a folder; move it away")
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CheckpointError(
                f"cannot create checkpoint folder {self.folder}: {err.strerror or err}"
            ) from err
        for stale in self.folder.glob(_TEMP_GLOB):
            stale.unlink(missing_ok=True)
            log.info("removed %s, left by an interrupted checkpoint write", stale)

    @property
    def last(self) -> Path:
        return self.folder / LAST_NAME

    @property
    def best(self) -> Path:
        return self.folder / BEST_NAME

    def snapshot(self, global_step: int) -> Path:
        return self.folder / f"step_{global_step:09d}.pt"

    def top(self, global_step: int) -> Path:
        """One of the ``checkpoint.keep_best`` best epochs' checkpoints."""
        return self.folder / f"best_step_{global_step:09d}.pt"

    def prune_top(self, keep: set[int]) -> None:
        """Remove the ``best_step_*.pt`` files whose step is not in ``keep``."""
        for path in self.folder.glob("best_step_*.pt"):
            match = _TOP.fullmatch(path.name)
            if match and int(match.group(1)) not in keep:
                path.unlink(missing_ok=True)

    def save(
        self,
        state: dict[str, Any],
        *,
        last: bool = True,
        best: bool = False,
        snapshot: bool = True,
        top: bool = False,
    ) -> list[Path]:
        """Write the files asked for and return their paths.

        ``snapshot`` adds ``step_<global_step>.pt`` when the writer keeps a history
        (``keep_last > 0``), ``top`` adds ``best_step_<global_step>.pt``. The state is
        serialized once; the other files are byte copies of the first, each its own file, so
        damage to one never reaches another.
        """
        targets = [self.last] if last else []
        if best:
            targets.append(self.best)
        if top:
            targets.append(self.top(state[GLOBAL_STEP]))
        if snapshot and self.keep_last > 0:
            targets.append(self.snapshot(state[GLOBAL_STEP]))
        for index, path in enumerate(targets):
            self._write(path, targets[0] if index else state)
        if snapshot and self.keep_last > 0:
            self._prune()
        return targets

    def _write(self, path: Path, source: dict[str, Any] | Path) -> None:
        try:
            if isinstance(source, Path):
                _copy_file(source, path)
            else:
                save_checkpoint(source, path)
        except OSError as err:
            raise CheckpointError(
                f"could not write checkpoint {path}: {err.strerror or _one_line(err)}; "
                f"its previous version is intact"
            ) from err

    def _prune(self) -> None:
        """Keep the ``keep_last`` snapshots with the highest steps."""
        steps = sorted(
            (int(match.group(1)), path)
            for path in self.folder.glob("step_*.pt")
            if (match := _SNAPSHOT.fullmatch(path.name))
        )
        for _, old in steps[: -self.keep_last]:
            old.unlink(missing_ok=True)
