"""The ``sam-train`` entry point: Hydra composes, ``validate`` checks (no torch), ``train`` runs.

Nothing else in the package reads Hydra. Exit codes: 0 done (or already complete), 2 a user
error (one line on stderr), 75 preempted (SIGTERM/SIGUSR1: continue with ``resume=auto``),
130 Ctrl-C. In a multirun (``-m``) a failed job is reported and the sweep goes on; the sweep
then ends with a summary of the failed jobs and exit code 1.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from sam_train.config import adjust, per_device_batch, register_configs, validate
from sam_train.config.overrides import check_command_line, flags_first
from sam_train.console import to_log_files
from sam_train.errors import (
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    EXIT_SWEEP_FAILED,
    EXIT_USER_ERROR,
    RunFolderError,
    SamTrainError,
    StopTraining,
)
from sam_train.launch import LAUNCHER_ENV, launch, split_nproc
from sam_train.paths import expect_folder, quote_path_overrides
from sam_train.run_folder import keep_sweep_record

log = logging.getLogger("sam_train")


def report(message: str, level: int = logging.ERROR) -> None:
    """A line for the user: once on stderr, and in the run's log file (not a second time on
    the console, where the log's stream handler would repeat it)."""
    to_log_files(message, level)
    prefix = "error: " if level >= logging.ERROR else ""
    print(f"sam-train: {prefix}{message}", file=sys.stderr)


def report_error(message: str) -> None:
    report(message)


def fail(message: str) -> None:
    report_error(message)
    sys.exit(EXIT_USER_ERROR)


def _ensure_writable(folder: Path, key: str) -> None:
    if (problem := expect_folder(folder, "a folder", exists=False)) is not None:
        fail(f"{key}={problem}; choose another {key}")  # not "not writable (File exists)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test.{os.getpid()}"  # one per rank: they run this at once
        probe.write_bytes(b"\0")  # a byte: a full disk refuses it, not an empty file
        probe.unlink(missing_ok=True)
    except OSError as err:
        fail(f"{key}={folder} is not writable ({err.strerror or err}); choose another {key}")


class RunFolderCheck(Callback):
    """Before Hydra writes anything (its log file): the run or sweep folder must be writable.
    Whether it may hold this run is decided by the run itself, under the folder's lock."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        _ensure_writable(Path(config.hydra.run.dir), "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _ensure_writable(sweep_dir, "hydra.sweep.dir")
        kept = keep_sweep_record(sweep_dir)
        if kept is not None:
            print(f"sam-train: the earlier sweep's record is now {kept}", file=sys.stderr)


def config_dir() -> str:
    """``configs/`` beside the package (source checkout) or inside it (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"sam-train configs not found near {here}")


register_configs()

_launch_time: float | None = None
_world_size = 1  # the processes of a launch, from the process group main() joins


def launch_time(pattern: str) -> str:
    """``${launch_time:%Y-%m-%d}``: Hydra's ``${now:}``, but one instant for every rank.

    Hydra resolves ``${now:}`` per process; ranks that start a second apart would each
    create a run folder. Under torchrun or srun the instant is rank 0's (see ``main``).
    """
    global _launch_time
    if _launch_time is None:
        _launch_time = time.time()
    return datetime.fromtimestamp(_launch_time).strftime(pattern)


OmegaConf.register_new_resolver("launch_time", launch_time, replace=True)

MAX_DIRNAME_BYTES = 200  # file systems allow 255 per name


def job_dirname(number: object, overrides: str, sweep_dir: str | None = None) -> str:
    """``${job_dirname:${hydra.job.num},${hydra.job.override_dirname},${hydra.sweep.dir}}``:
    a sweep job's folder named by its overrides, the ones the sweep varies first
    (``sam.rho=0.05,experiment=quickstart``: TensorBoard lists runs by folder, so a sweep's runs
    lead with what differs), a ``/`` in a value as ``_``; by its number when it has none or
    they would make too long a name. A folder named the old way (all overrides sorted) that
    is already in ``sweep_dir`` keeps its name, so an earlier sweep re-run resumes its jobs."""
    items = _OVERRIDE_ITEM.split(str(overrides)) if overrides else []
    varied = _swept_keys(sys.argv[1:])
    if sweep_dir and (Path(sweep_dir) / _folder_name(items)).exists():
        return _folder_name(items)
    first = [item for item in items if item.partition("=")[0].lstrip("+~") in varied]
    name = _folder_name(first + [item for item in items if item not in first])
    if not name or len(name.encode()) > MAX_DIRNAME_BYTES:
        return str(number)
    return name


# The separator between two overrides of ``hydra.job.override_dirname``: a comma before key=.
_OVERRIDE_ITEM = re.compile(r",(?=[+~]*[\w.-]+=)")


def _folder_name(items: list[str]) -> str:
    return ",".join(items).replace("/", "_")


def _swept_keys(args: list[str]) -> set[str]:
    """The keys a command line sweeps (``sam.rho=0.05,0.1``, ``seed=range(3)``, ...)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser, keys = OverridesParser.create(), set()
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except OverrideParseException:  # reported by the command-line check or by Hydra
            continue
        if override.is_sweep_override():
            keys.add(override.key_or_group)
    return keys


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


def write_hydra_files(run_dir: Path) -> None:
    """Hydra's ``.hydra/`` (config, Hydra's config, overrides), written once the folder is
    known to be this run's: ``hydra.output_subdir`` is null so that Hydra itself never
    rewrites the files of a run that a resume refuses or finds complete."""
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(_task_config, folder / "config.yaml", resolve=False)
        OmegaConf.save(OmegaConf.create({"hydra": hydra_cfg}), folder / "hydra.yaml")
        OmegaConf.save(hydra_cfg.overrides.task, folder / "overrides.yaml")
    except OSError as err:  # a full disk, a folder that turned read-only
        raise RunFolderError(f"cannot write {folder}: {err.strerror or err}") from err


_task_config: DictConfig | None = None
failed_jobs: list[str] = []  # "#N overrides: reason", for the multirun summary


def _train_job(cfg: DictConfig) -> float | None:
    """One job: check, adjust, train. Returns best_acc1 (the value Hydra sweepers optimise)."""
    global _task_config
    validate(cfg)
    per_device_batch(cfg, _world_size)  # the batch's split: a launch's workers stop before torch
    for warning in adjust(cfg):
        log.warning("%s", warning)
    _task_config = cfg
    from sam_train.train import train  # torch, timm and torchvision only for a valid config

    hydra_cfg = HydraConfig.get()
    results = train(
        cfg,
        Path(hydra_cfg.runtime.output_dir),
        prepare_folder=write_hydra_files,
        overrides=list(hydra_cfg.overrides.task),
    )
    return results.get("best_acc1")


def _exit_code_of_stop(exit_code: int) -> int:
    """Under torchrun a preempted worker exits 0: a non-zero code would make torchrun report
    the group FAILED and, with ``--max-restarts``, restart it and undo the stop. The stopped
    run is continued by launching it again with ``resume=auto``."""
    launched_here = LAUNCHER_ENV in os.environ  # sam-train's launcher never restarts
    if exit_code == EXIT_PREEMPTED and "TORCHELASTIC_RUN_ID" in os.environ and not launched_here:
        return 0
    return exit_code


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _run(cfg: DictConfig) -> float | None:
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return _train_job(cfg)
    except StopTraining as stop:
        run_dir = HydraConfig.get().runtime.output_dir
        message = (
            f"{stop}; checkpoint {run_dir}/checkpoints/last.pt; continue with resume=auto "
            f"hydra.run.dir={run_dir}"
        )
        report(message, logging.WARNING)
        sys.exit(_exit_code_of_stop(stop.request.exit_code))
    except KeyboardInterrupt:
        print("sam-train: interrupted (second Ctrl-C): no checkpoint written", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except SamTrainError as err:
        if not multirun:
            fail(str(err))
        report_error(str(err))
        _record_failure(str(err))
    except Exception as err:  # a bug: in a sweep, report it and go on with the next job
        if not multirun:
            raise
        log.error("%s", traceback.format_exc())
        _record_failure(f"{type(err).__name__}: {err}")
    return None


def _record_failure(reason: str) -> None:
    hydra_cfg = HydraConfig.get()
    overrides = " ".join(hydra_cfg.overrides.task)
    failed_jobs.append(f"#{hydra_cfg.job.num} {overrides}: {reason}")


def _launched_distributed() -> bool:
    """torchrun or srun started several processes (environment only: torch is not imported)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"]) > 1
    return "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def _follower_overrides(args: list[str]) -> list[str]:
    """Ranks other than 0 share rank 0's folder but write nothing to it: their log goes to
    the console (torchrun's ``--log-dir`` keeps per-rank logs)."""
    extra = {"hydra/job_logging": "stdout"}
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    return [f"{key}={value}" for key, value in extra.items() if key not in given]


def _run_and_summarise() -> None:
    failed_jobs.clear()
    _run()
    if failed_jobs:
        print(f"sam-train: {len(failed_jobs)} job(s) of the sweep failed:", file=sys.stderr)
        for line in failed_jobs:
            print(f"  {line}", file=sys.stderr)
        sys.exit(EXIT_SWEEP_FAILED)


def _escape_unencodable_output() -> None:
    """A path that is not UTF-8 (a working directory named in another encoding) reaches
    Python as lone surrogates; printing or logging it would raise. Escape instead."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(errors="backslashreplace")


def checked_arguments(args: list[str]) -> list[str]:
    """sam-train's arguments as Hydra reads them (paths quoted), once checked: ConfigError, one
    line, for the first bad one. For ``main`` and for the scripts that launch sam-train."""
    quoted = quote_path_overrides(args, multirun=bool({"-m", "--multirun"} & set(args)))
    check_command_line(quoted, config_dir())
    return quoted


def main() -> None:
    """Under torchrun or srun: join the process group first, so rank 0 can name the run
    folder for everyone before Hydra creates it; then run as a single process would, and
    leave through :func:`process_group.exit_worker`."""
    _escape_unencodable_output()
    nproc, args = split_nproc(sys.argv[1:])
    args = flags_first(args)
    try:  # before Hydra and before any worker starts: one line for a typo
        quoted = checked_arguments(args)
    except SamTrainError as err:
        fail(str(err))
    if nproc is not None and not _launched_distributed():
        sys.exit(launch(nproc, args))  # the workers come back here, under the agent
    sys.argv[1:] = quoted
    if not _launched_distributed():
        _run_and_summarise()
        return
    global _launch_time, _world_size
    from sam_train.strategy import process_group

    try:
        info = process_group.init_distributed()
    except SamTrainError as err:
        print(f"sam-train: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    with process_group.exits_worker():
        _launch_time, _world_size = process_group.shared_time(), info.world_size
        if not info.is_main:
            sys.argv += _follower_overrides(sys.argv[1:])
        _run_and_summarise()  # Hydra turns every failure of the job into SystemExit


if __name__ == "__main__":
    main()
