"""The config ``sam-train`` would run with some overrides (Hydra's compose API), for the code
that builds runs without the command line: the benchmarks and the tests."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

from sam_train.cli import config_dir
from sam_train.config import register_configs


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """``configs/train.yaml`` with ``overrides``, as the command line would resolve it."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [], return_hydra_config=False)
