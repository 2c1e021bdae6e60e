"""The ``sam-train`` entry point: Hydra composes the config, ``train`` does the rest.

Nothing else in the package reads Hydra. User errors (bad values, missing data, unusable
checkpoints) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sam_train.config import register_configs, validate
from sam_train.errors import Preempted, SamTrainError

EXIT_USER_ERROR = 2
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: requeue and continue with resume=auto


def fail(message: str) -> None:
    """The one line a user sees for an error they can fix; exit code 2."""
    logging.getLogger("sam_train").error("%s", message)
    print(f"sam-train: error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


class RunFolderCheck(Callback):
    """Before Hydra writes anything: the run folder must be writable and must not hold an
    earlier run, unless that run is being resumed (``resume=auto`` or a path)."""

    def on_run_start(self, config: DictConfig, **kwargs: object) -> None:
        run_dir = Path(config.hydra.run.dir)
        if (run_dir / "checkpoints" / "last.pt").is_file() and config.get("resume") is None:
            fail(
                f"{run_dir} already holds a run; continue it with resume=auto or choose "
                "another hydra.run.dir"
            )
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = run_dir / f".write_test.{os.getpid()}"  # one per rank: they run this at once
            probe.write_text("")
            probe.unlink(missing_ok=True)
        except OSError as err:
            fail(f"output folder {run_dir} is not writable ({err.strerror or err})")


def config_dir() -> str:
    """``configs/`` beside the package (source checkout) or inside it (installed wheel)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if (candidate / "train.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError(f"sam-train configs not found near {here}")


register_configs()

_launch_time: float | None = None


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


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="train")
def _run(cfg: DictConfig) -> float | None:
    try:
        validate(cfg)
        from sam_train.train import train  # torch, timm and torchvision only for a valid config

        results = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    except Preempted as stop:
        logging.getLogger("sam_train").warning("%s", stop)
        print(f"sam-train: {stop}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)
    except SamTrainError as err:
        fail(str(err))
    return results["best_acc1"]  # the value Hydra sweepers optimise


def _launched_distributed() -> bool:
    """torchrun or srun started several processes (environment only: torch is not imported)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["WORLD_SIZE"]) > 1
    return "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1


def _follower_overrides(args: list[str]) -> list[str]:
    """Ranks other than 0 share rank 0's folder but write nothing to it: no ``.hydra/``, and
    their log goes to the console (torchrun's ``--log-dir`` keeps per-rank logs)."""
    extra = {"hydra.output_subdir": "null", "hydra/job_logging": "stdout"}
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    return [f"{key}={value}" for key, value in extra.items() if key not in given]


def main() -> None:
    """Under torchrun or srun: join the process group first, so rank 0 can name the run
    folder for everyone before Hydra creates it; then run as a single process would, and
    leave through :func:`distributed.exit_worker`."""
    if not _launched_distributed():
        _run()
        return
    global _launch_time
    from sam_train import distributed

    try:
        info = distributed.init_distributed()
    except SamTrainError as err:
        print(f"sam-train: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    with distributed.exits_worker():
        _launch_time = distributed.shared_time()
        if not info.is_main:
            sys.argv += _follower_overrides(sys.argv[1:])
        _run()  # Hydra turns every failure of the job into SystemExit


if __name__ == "__main__":
    main()
