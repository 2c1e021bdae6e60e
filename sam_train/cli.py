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
from omegaconf import DictConfig

from sam_train.config import register_configs, validate
from sam_train.errors import SamTrainError

EXIT_USER_ERROR = 2


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
    except SamTrainError as err:
        logging.getLogger("sam_train").error("%s", err)
        print(f"sam-train: error: {err}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    return results["best_acc1"]  # the value Hydra sweepers optimise


def main() -> None:
    _run()


if __name__ == "__main__":
    main()
