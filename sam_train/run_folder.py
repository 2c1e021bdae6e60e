"""One run folder, one run: what counts as a run's work, the checks before a run writes
anything, and an exclusive lock held for the life of the run.

Use them in this order (rank 0 only; other ranks of the same run share its folder)::

    with RunLock(run_dir):
        check_run_folder(run_dir, resume=cfg.resume)
        ...  # train

The lock comes first so that two runs started at once cannot both pass the check.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import re
import socket
from pathlib import Path
from types import TracebackType

from sam_train.errors import RunFolderBusy, RunFolderError

# Files that mean a folder holds a run's work. Not .hydra/ or train.log: Hydra writes those
# before a run starts, and when a bad value stops it.
CHECKPOINTS_DIR = "checkpoints"  # <run_dir>/checkpoints; sam_train.checkpoint uses it too
ARTIFACT_PATTERNS = (
    f"{CHECKPOINTS_DIR}/*.pt",
    "results.json",
    "metrics.csv",
    "events.out.tfevents.*",
)
LOCK_NAME = ".lock"
_LISTED = 3  # artifacts named in an error message


def find_artifacts(run_dir: Path) -> list[Path]:
    """Every file in ``run_dir`` that one of ``ARTIFACT_PATTERNS`` matches, sorted."""
    run_dir = Path(run_dir)
    found = {path for pattern in ARTIFACT_PATTERNS for path in run_dir.glob(pattern)}
    return sorted(path for path in found if path.is_file())


def check_run_folder(run_dir: Path, *, resume: str | None) -> None:
    """Refuse a folder this run may not write into; create it if missing.

    A folder holding a run's work is only for resuming that run: ``resume=auto`` or a path
    inside ``<run_dir>/checkpoints``. A fresh start, or another run's checkpoint, would mix
    two runs' files. Raises RunFolderError (one line) for that and for a folder that cannot
    be written. A relative ``resume`` path is taken from the current directory.
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"  # one per process: ranks probe at once
        probe.write_bytes(b"\0")  # a byte: a full disk refuses it
        probe.unlink()
    except OSError as err:
        raise RunFolderError(
            f"output folder {run_dir} is not writable ({err.strerror or err}); "
            "choose another hydra.run.dir"
        ) from err
    artifacts = find_artifacts(run_dir)
    if not artifacts or _resumes_this_folder(run_dir, resume):
        return
    listed = ", ".join(str(path.relative_to(run_dir)) for path in artifacts[:_LISTED])
    if len(artifacts) > _LISTED:
        listed += f" and {len(artifacts) - _LISTED} more"
    if resume is None:
        advice = "continue it with resume=auto or choose another hydra.run.dir"
    else:
        advice = f"resume={resume} is not this folder's checkpoint; choose another hydra.run.dir"
    raise RunFolderError(f"{run_dir} already holds a run ({listed}); {advice}")


def _resumes_this_folder(run_dir: Path, resume: str | None) -> bool:
    if resume is None:
        return False
    if resume == "auto":
        return True
    return Path(resume).resolve().is_relative_to((run_dir / CHECKPOINTS_DIR).resolve())


class RunLock:
    """An exclusive ``flock`` on ``<run_dir>/.lock`` while a run uses the folder.

    The kernel drops the lock when the process dies, however it dies, so a killed run never
    blocks the next one. The file holds the owner's pid and host, for the message a second
    run gets (RunFolderBusy). It is never deleted: a file unlinked while another process is
    about to lock it would let two runs hold two different locks.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock without waiting; RunFolderBusy if a live run holds it."""
        if self._fd is not None:
            return self
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as err:
            raise RunFolderError(
                f"cannot create the lock file {self.path} ({err.strerror or err}); "
                "choose another hydra.run.dir"
            ) from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            owner = _read_owner(fd)
            os.close(fd)
            raise self._refusal(err, owner) from err
        with contextlib.suppress(OSError):  # the owner's name is for messages only
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._fd = fd
        return self

    def _refusal(self, err: OSError, owner: str) -> RunFolderError:
        if err.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            return RunFolderBusy(
                f"run folder {self.run_dir} is in use by another sam-train run ({owner}); "
                "wait for it or choose another hydra.run.dir"
            )
        return RunFolderError(  # ENOLCK, EOPNOTSUPP...: NFS without lock support
            f"cannot lock {self.path} ({err.strerror or err}): the file system does not "
            "support flock; choose a hydra.run.dir on a local disk"
        )

    def release(self) -> None:
        """Drop the lock (a no-op when not held)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # no stale pid for the next reader
        try:  # LOCK_UN, not only close: forked workers may hold copies of the descriptor
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    """``pid N on HOST`` from a lock file's contents, as far as they can be read."""
    try:
        pid, host = os.pread(fd, 256, 0).decode(errors="replace").split()
    except (OSError, ValueError):
        return "pid unknown"
    return f"pid {pid} on {host}"


SWEEP_RECORD = "multirun.yaml"  # what Hydra's sweepers write in the sweep folder


def keep_sweep_record(sweep_dir: Path) -> Path | None:
    """A sweep re-run in the same folder would replace the earlier sweep's ``multirun.yaml``:
    move it to the first free ``multirun.<n>.yaml`` (1 the oldest) and return where it went."""
    record = sweep_dir / SWEEP_RECORD
    if not record.is_file():
        return None
    for number in itertools.count(1):  # ends at the first free number
        kept = sweep_dir / f"{record.stem}.{number}{record.suffix}"
        with contextlib.suppress(FileExistsError):
            os.link(record, kept)  # never over an existing record, even under a race
            record.unlink()
            return kept
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------- a sweep's jobs
RUN_MARKER = Path(".hydra") / "config.yaml"  # a run: the CLI writes it once the folder is its own
JOB_LOG_GLOB = "*.log"  # Hydra's job log, <hydra.job.name>.log (configs/hydra/job_logging)


def unstarted_jobs(path: Path) -> list[Path]:
    """The folders under ``path`` of sweep jobs that ended before their run started (a value
    the check refused, a busy folder): Hydra's job log, a sweep record above, no ``.hydra/``
    (``path`` may be such a job's folder itself). Sorted."""
    jobs = set()
    for log in path.rglob(JOB_LOG_GLOB):
        in_sweep = any((folder / SWEEP_RECORD).is_file() for folder in log.parents)
        in_run = any((folder / RUN_MARKER).is_file() for folder in _up_to(log.parent, path))
        if in_sweep and not in_run:
            jobs.add(log.parent)
    return sorted(jobs)


def job_log(job: Path) -> Path:
    """A sweep job's log file."""
    return min(job.glob(JOB_LOG_GLOB))


def unstarted_jobs_problem(path: Path) -> str | None:
    """Why ``path`` holds no run, where it holds sweep jobs that never started one, in one
    line: how many, the first one's log and its last line (None: it holds none such)."""
    jobs = unstarted_jobs(path)
    if not jobs:
        return None
    log = job_log(jobs[0])
    found = f"{path} holds {len(jobs)} sweep job(s), none of which started a run"
    if jobs == [path]:
        found = f"{path} is a sweep job that ended before its run started"
    return f"{found}; {log} ends: {_last_line(log)}"


def _up_to(folder: Path, top: Path) -> list[Path]:
    """``folder`` and the folders above it, up to ``top``."""
    chain = [folder]
    while chain[-1] != top and chain[-1].parent != chain[-1]:
        chain.append(chain[-1].parent)
    return chain


def _last_line(log: Path) -> str:
    """A log's last line without its ``[time][logger][LEVEL] - `` prefix: why the job ended."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return re.sub(r"^(\[[^]]*\])+ - ", "", lines[-1]) if lines else "(empty)"
