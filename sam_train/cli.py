"""The ``sam-train`` entry point: Hydra composes the config, ``train`` does the rest.

Nothing else in the package reads Hydra. User errors (bad values, missing data, unusable
checkpoints) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

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
            probe = run_dir / ".write_test"
            probe.write_text("")
            probe.unlink()
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


def main() -> None:
    _run()


if __name__ == "__main__":
    main()
