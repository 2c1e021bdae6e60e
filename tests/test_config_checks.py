"""Config values that used to end in a traceback, a confusing message or a garbage run: each
now ends in one ConfigError line naming the key (validate, torch-free), or in create_model
for what only the model can tell."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import get_type_hints

import pytest
from conftest import compose_config, config_refusal
from omegaconf import OmegaConf

from sam_train.config import (
    DATA_SPECS,
    MAX_SEED,
    SAM_VARIANT_OPTIONS,
    ConfigError,
    SAMConfig,
    TrainConfig,
    adjust,
    validate,
)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=-1"], "seed must be in [0, "),
        ([f"seed={2**64}"], "seed must be in [0, "),
        ([f"seed={MAX_SEED + 1}"], "seed must be in [0, "),
        (["trainer.device=mps"], "trainer.device='mps' is not one of: auto, cpu, cuda"),
        (
            ["optimizer.name=sdg"],  # a near miss: the nearest choice, as for a key
            "optimizer.name='sdg' is not one of: sgd, adamw; did you mean optimizer.name=sgd?",
        ),
        (["trainer.amp=bf61"], "; did you mean trainer.amp=bf16?"),
        (["trainer.device=gpu"], "trainer.device='gpu' is not one of"),
        (["trainer.device=cuda:x"], "trainer.device='cuda:x' is not one of"),
        (["optimizer.momentum=-1"], "optimizer.momentum must be >= 0, got -1"),
        (["optimizer=adamw", "optimizer.betas=[2,2]"], "optimizer.betas[0] must be in [0, 1)"),
        (["optimizer=adamw", "optimizer.betas=[0.9,1]"], "optimizer.betas[1] must be in [0, 1)"),
        (["optimizer=adamw", "optimizer.betas=[0.9]"], "optimizer.betas takes 2 values"),
        (["optimizer.eps=-1e-8"], "optimizer.eps must be >= 0"),
        (["dataset.test_fraction=0.9999"], "dataset.test_fraction=0.9999 leaves 0 training"),
        (["dataset.in_chans=3"], "dataset.in_chans=3 but digits images have 1 channel"),
        (["dataset=cifar10", "dataset.in_chans=1"], "set dataset.in_chans=3"),
        (["dataset=imagenet", "dataset.in_chans=4"], "set dataset.in_chans=3"),
        (["scheduler.warmup_lr=-0.1"], "scheduler.warmup_lr must be >= 0"),
        (["scheduler.warmup_epochs=-1"], "scheduler.warmup_epochs must be >= 0"),
        (["scheduler.min_lr=0.5"], "scheduler.min_lr=0.5 must not exceed optimizer.lr=0.1"),
        (
            ["scheduler=multistep", "scheduler.milestones=[60,30]"],
            "scheduler.milestones must be strictly increasing, got [60, 30]",
        ),
        (["scheduler=multistep", "scheduler.milestones=[0,3]"], "scheduler.milestones[0]"),
        (
            ["dataset=cifar10", "dataset.loader=gpu", "augment=cutout"],
            "dataset.loader=gpu implements random crop and flip only; augment=cutout",
        ),
        (
            ["dataset=cifar10", "dataset.loader=gpu", "augment=autoaugment"],
            "augment=autoaugment needs dataset.loader=dataloader",
        ),
        (
            ["dataset=cifar10", "dataset.image_size=224", "dataset.loader=gpu"],
            "dataset.loader=gpu crops and flips CIFAR at 32 px; dataset.image_size=224 "
            "upsamples cifar10: use dataset.loader=dataloader or dataset.image_size=32",
        ),
        (
            ["dataset=cifar100", "dataset.image_size=64", "augment=cutout"],
            "augment=cutout works on CIFAR's own 32 px images; dataset.image_size=64 "
            "upsamples cifar100: use augment=basic or dataset.image_size=32",
        ),
        (
            ["dataset=cifar10", "dataset.image_size=224", "augment=autoaugment"],
            "augment=autoaugment works on CIFAR's own 32 px images",
        ),
    ],
)
def test_bad_value_is_one_line_naming_the_key(overrides, message):
    assert message in config_refusal(overrides)


def test_misspelt_key_added_with_plus_is_refused_with_the_closest_key():
    assert config_refusal(["+trainer.batchsize=32"]) == (
        "unknown key trainer.batchsize; did you mean trainer.batch_size?"
    )
    assert "did you mean sam.rho?" in config_refusal(["+sam.rhoo=0.1"])
    assert "did you mean seed?" in config_refusal(["+sed=1"])


def test_unknown_key_without_a_close_one_lists_the_group():
    message = config_refusal(["+logger.comet=true"])
    assert message == "unknown key logger.comet; logger takes: tensorboard, csv, wandb, mlflow"


def test_model_kwargs_stay_open_even_with_plus():
    cfg = compose_config(["+model.kwargs.width=8", "model.kwargs.drop_rate=0.1"])
    validate(cfg)
    assert (cfg.model.kwargs.width, cfg.model.kwargs.drop_rate) == (8, 0.1)


def _schema_fields(cls: type = TrainConfig, prefix: str = ""):
    """(dotted key, field) of every leaf field of the schema."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        if is_dataclass(hints[f.name]):
            yield from _schema_fields(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f


def _just_outside(meta) -> str:
    """A value that violates one declared bound (the lower one when there are two)."""
    if "ge" in meta:
        return str(meta["ge"] - 1)
    if "gt" in meta:
        return str(meta["gt"])
    if "le" in meta:
        return str(meta["le"] + 1)
    return str(meta["lt"])


BOUNDED = [
    (key, f.metadata) for key, f in _schema_fields() if {"ge", "gt", "le", "lt"} & set(f.metadata)
]
CHOICES = [(key, f.metadata["choices"]) for key, f in _schema_fields() if "choices" in f.metadata]


@pytest.mark.parametrize(("key", "meta"), BOUNDED, ids=[k for k, _ in BOUNDED])
def test_every_declared_bound_is_enforced(key, meta):
    """The generic pass reads the schema: a value past any declared bound is refused."""
    variant = (
        [f"sam.name={SAM_VARIANT_OPTIONS[key[4:]][0]}"] if key[4:] in SAM_VARIANT_OPTIONS else []
    )
    assert config_refusal([*variant, f"{key}={_just_outside(meta)}"]).startswith(f"{key} must be ")


@pytest.mark.parametrize(("key", "choices"), CHOICES, ids=[k for k, _ in CHOICES])
def test_every_declared_choice_list_is_enforced(key, choices):
    bogus = "bogus" if isinstance(choices[0], str) else "3"
    assert key in config_refusal([f"{key}={bogus}"])


def test_nan_and_inf_are_outside_every_range():
    assert "optimizer.lr must be > 0, got nan" in config_refusal(["optimizer.lr=nan"])
    assert "sam.rho must be >= 0, got inf" in config_refusal(["sam.rho=inf"])
    validate(compose_config(["sam.p=inf"]))  # a choice, not a range


def test_variant_options_are_declared_on_the_schema_fields():
    declared = {f.name for f in fields(SAMConfig) if "variants" in f.metadata}
    assert set(SAM_VARIANT_OPTIONS) == declared
    for option, variants in SAM_VARIANT_OPTIONS.items():
        other = next(v for v in ("sam", "gsam", "fsam") if v not in variants)
        value = {
            "k": "2",
            "start_epoch": "2",
            "past_epochs": "2",
            "decouple": "true",
            "per_tensor": "false",
            "probability_schedule": "linear",
        }.get(option, "0.5")
        assert f"sam.{option} applies to sam={variants[0]}" in config_refusal(
            [f"sam.name={other}", f"sam.{option}={value}"]
        )


@pytest.mark.parametrize("dataset", sorted(DATA_SPECS))
def test_each_dataset_gets_its_declared_channel_count(dataset):
    cfg = compose_config([f"dataset={dataset}"])
    assert cfg.dataset.in_chans == DATA_SPECS[dataset].channels
    validate(cfg)
    assert OmegaConf.to_container(cfg, resolve=True)["dataset"]["in_chans"] == (
        DATA_SPECS[dataset].channels
    )


def test_digits_split_bounds_agree_with_scikit_learn():
    """The check refuses exactly the fractions scikit-learn's stratified split refuses."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    spec = DATA_SPECS["digits"]
    labels = np.arange(spec.images) % spec.classes
    lowest, highest = (spec.classes - 1) / spec.images, (spec.images - spec.classes) / spec.images
    for fraction in (lowest * 1.01, highest, 0.25):
        validate(compose_config([f"dataset.test_fraction={fraction}"]))
        train_test_split(labels, test_size=fraction, random_state=0, stratify=labels)
    for fraction in (lowest * 0.99, highest + 1e-4, 0.9999):
        assert "dataset.test_fraction" in config_refusal([f"dataset.test_fraction={fraction}"])
        with pytest.raises(ValueError):
            train_test_split(labels, test_size=fraction, random_state=0, stratify=labels)


def test_resume_strict_is_a_top_level_switch_on_by_default():
    assert compose_config([]).resume_strict is True
    validate(compose_config(["resume_strict=false"]))


# ------------------------------------------------------------------------------- adjust
def test_a_warmup_as_long_as_the_run_is_shortened_with_a_warning():
    cfg = compose_config(["experiment=quickstart", "trainer.epochs=1"])
    validate(cfg)
    warmup = cfg.scheduler.warmup_epochs
    assert warmup >= 1
    warnings = adjust(cfg)
    assert cfg.scheduler.warmup_epochs == 0
    assert len(warnings) == 1 and f"scheduler.warmup_epochs={warmup}" in warnings[0]
    assert "\n" not in warnings[0]


def test_a_warmup_shorter_than_the_run_is_left_alone():
    cfg = compose_config(["experiment=quickstart", "trainer.epochs=5"])
    before = cfg.scheduler.warmup_epochs
    assert adjust(cfg) == [] and cfg.scheduler.warmup_epochs == before < 5
    cfg = compose_config(["scheduler.warmup_epochs=7", "trainer.epochs=7"])
    assert adjust(cfg) and cfg.scheduler.warmup_epochs == 6


def test_adjust_works_on_a_read_only_config():
    cfg = compose_config(["scheduler.warmup_epochs=3", "trainer.epochs=2"])
    OmegaConf.set_readonly(cfg, True)
    assert adjust(cfg) and cfg.scheduler.warmup_epochs == 1


# ------------------------------------------------------------------------- create_model
@pytest.mark.parametrize(
    ("name", "in_chans", "kwargs", "message"),
    [
        ("digits_cnn", 1, {"width": -4}, "model.kwargs.width=-4 (int) rejected by digits_cnn"),
        ("digits_cnn", 1, {"width": 0}, "model.kwargs.width=0 (int) leaves digits_cnn's"),
        ("digits_cnn", 1, {"width": "abc"}, "model.kwargs.width='abc' (str) rejected by"),
        ("digits_cnn", 1, {"drop_rate": 0.1, "width": "abc"}, "model.kwargs.width='abc' (str)"),
        ("digits_cnn", 1, {"drop_rate": [0.1]}, "model.kwargs.drop_rate=[0.1] (list) rejected"),
        ("digits_cnn", 1, {"nope": 1}, "model.kwargs.nope=1 (int) rejected by digits_cnn"),
        ("resnet10t", 3, {"drop_rate": [0.1]}, "drop_rate=[0.1] (list) rejected by resnet10t at"),
        ("resnet10t", 3, {"drop_rate": "x"}, "model.kwargs.drop_rate='x' (str) rejected by"),
    ],
)
def test_bad_model_kwargs_name_the_kwarg_and_what_the_model_got(name, in_chans, kwargs, message):
    from sam_train.models import create_model

    with pytest.raises(ConfigError) as err:
        create_model(name, num_classes=10, in_chans=in_chans, **kwargs)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("digits_cnn", {"width": 4, "drop_rate": 0.1}), ("vit_tiny_patch16_224", {"img_size": 32})],
)
def test_good_model_kwargs_still_build(name, kwargs):
    """The forward probe runs at the model's default input size; a keyword that changes that
    size (ViT's img_size) must not be mistaken for a bad one."""
    from sam_train.models import create_model

    model = create_model(name, num_classes=10, in_chans=1 if name == "digits_cnn" else 3, **kwargs)
    assert all(p.numel() > 0 for p in model.parameters())


def test_pretrained_for_a_model_without_weights_is_refused():
    from sam_train.models import create_model

    with pytest.raises(ConfigError, match=r"^model\.pretrained=true but digits_cnn has no"):
        create_model("digits_cnn", num_classes=10, in_chans=1, pretrained=True)


@pytest.mark.parametrize("error", ["LocalEntryNotFoundError", "ConnectionError"])
def test_pretrained_without_network_is_one_line(monkeypatch, error):
    """What huggingface_hub raises offline (no network here: simulated where timm loads)."""
    import huggingface_hub.errors
    import timm.models._builder

    from sam_train.models import create_model

    exc = getattr(huggingface_hub.errors, error, None) or ConnectionError

    def offline(*args, **kwargs):
        raise exc("cannot reach huggingface.co")

    monkeypatch.setattr(timm.models._builder, "load_pretrained", offline)
    with pytest.raises(ConfigError) as err:
        create_model("resnet10t", num_classes=10, in_chans=3, pretrained=True)
    assert str(err.value).startswith("model.pretrained=true: resnet10t's weights could not")
    assert error in str(err.value) and "\n" not in str(err.value)
