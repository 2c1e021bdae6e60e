"""Config: the dataclass schema registered in Hydra's ConfigStore, and its checks.

``configs/train.yaml`` puts ``train_schema`` first in its defaults list, so every YAML file and
every command-line override is merged onto these typed nodes: a misspelt key or a value of the
wrong type fails at composition. :func:`validate` adds the checks a type cannot express (the
choices and ranges declared in the schema's field metadata, unknown keys added with ``+``, and
the cross-field rules); :func:`adjust` then shortens what a short run cannot honour. The CLI
calls ``validate(cfg)``, then ``warnings = adjust(cfg)``.
"""

from sam_train.config.schema import (
    AUGMENTATIONS,
    BEST_METRICS,
    CIFAR_DATASETS,
    DATA_SPECS,
    DATASETS,
    GPU_LOADER_AUGMENTATIONS,
    GPU_LOADER_DATASETS,
    LOADERS,
    MAX_SEED,
    OPTIMIZERS,
    PRECISIONS,
    SAM_VARIANT_OPTIONS,
    SAM_VARIANTS,
    SCHEDULERS,
    AugmentConfig,
    CheckpointConfig,
    DatasetConfig,
    DataSpec,
    LoggerConfig,
    ModelConfig,
    OptimizerConfig,
    SAMConfig,
    SchedulerConfig,
    TrainConfig,
    TrainerConfig,
    checked,
    checks,
    dataset_channels,
    register_configs,
    register_resolvers,
    scale_lr,
)
from sam_train.config.validate import adjust, check_fields, check_known_keys, check_value, validate
from sam_train.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "BEST_METRICS",
    "CIFAR_DATASETS",
    "DATASETS",
    "DATA_SPECS",
    "GPU_LOADER_AUGMENTATIONS",
    "GPU_LOADER_DATASETS",
    "LOADERS",
    "MAX_SEED",
    "OPTIMIZERS",
    "PRECISIONS",
    "SAM_VARIANTS",
    "SAM_VARIANT_OPTIONS",
    "SCHEDULERS",
    "AugmentConfig",
    "CheckpointConfig",
    "ConfigError",
    "DataSpec",
    "DatasetConfig",
    "LoggerConfig",
    "ModelConfig",
    "OptimizerConfig",
    "SAMConfig",
    "SchedulerConfig",
    "TrainConfig",
    "TrainerConfig",
    "adjust",
    "check_fields",
    "check_known_keys",
    "check_value",
    "checked",
    "checks",
    "dataset_channels",
    "register_configs",
    "register_resolvers",
    "scale_lr",
    "validate",
]
