"""Every config composes against the schema; bad values fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REQUIRES, compose_config, config_refusal
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from sam_train.cli import config_dir
from sam_train.config import validate

CONFIGS = Path(config_dir())
GROUP_OPTIONS = [
    (group.name, option.stem)
    for group in sorted(CONFIGS.iterdir())
    if group.is_dir() and group.name != "experiment"
    for option in sorted(group.glob("*.yaml"))
]
EXPERIMENTS = sorted(
    str(p.relative_to(CONFIGS / "experiment").with_suffix(""))
    for p in CONFIGS.glob("experiment/**/*.yaml")
)


# configs/recipe holds the hyper-parameters several presets share; train.yaml does not choose
# one, so a recipe composes on its own as an addition (+recipe=...).
APPENDED_GROUPS = ("recipe",)


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_group_option_composes_and_validates(group, option):
    choice = f"+{group}={option}" if group in APPENDED_GROUPS else f"{group}={option}"
    cfg = compose_config([choice, *REQUIRES.get((group, option), [])])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_preset_resolves(experiment):
    cfg = compose_config([f"experiment={experiment}"])
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    validate(cfg)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_upsampled_to_224_validates_and_the_finetune_preset_asks_for_it(dataset):
    validate(compose_config([f"dataset={dataset}", "dataset.image_size=224"]))
    cfg = compose_config(["experiment=finetune_vit_sam", f"dataset={dataset}"])
    validate(cfg)
    assert cfg.dataset.image_size == 224  # the ViT-B/16's resolution, not CIFAR's 32


def test_quickstart_is_listed():
    assert "quickstart" in EXPERIMENTS


def test_paper_style_command_composes():
    cfg = compose_config(["dataset=cifar100", "model=wrn28_10", "sam.rho=0.05"])
    assert (cfg.dataset.num_classes, cfg.model.name, cfg.sam.rho) == (100, "wrn28_10", 0.05)


def test_model_kwargs_accept_new_keys_without_plus():
    cfg = compose_config(["model.name=resnet18", "model.kwargs.drop_rate=0.1"])
    assert cfg.model.kwargs.drop_rate == 0.1


@pytest.mark.parametrize(
    "override",
    ["trainer.epochz=3", "trainer.epochs=abc", "dataset=foo", "sam.rhoo=0.1", "model.kwargz.a=1"],
)
def test_misspelt_keys_and_wrong_types_fail_at_composition(override):
    with pytest.raises(ConfigCompositionException):
        compose_config([override])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("sam.rho=-0.1", "sam.rho must be >= 0"),
        ("sam.name=bogus", "sam.name='bogus' is not one of"),
        ("optimizer.lr=0", "optimizer.lr must be > 0"),
        ("dataset.label_noise=1.5", "dataset.label_noise must be in [0, 1]"),
        ("trainer.amp=fp8", "trainer.amp='fp8' is not one of"),
        ("trainer.accum_steps=3", "must be divisible by trainer.accum_steps=3"),
        ("trainer.epochs=0", "trainer.epochs must be > 0"),
        ("trainer.label_smoothing=1.5", "trainer.label_smoothing must be in [0, 1)"),
    ],
)
def test_bad_values_raise_one_clear_config_error(override, message):
    assert message in config_refusal([override])


def test_linear_schedule_decays_the_lr_linearly_to_min_lr_after_the_warm_up():
    """scheduler=linear (timm's poly, power 1), per update, as Chen et al.'s ViT recipe uses."""
    import torch

    from sam_train.build import build_scheduler

    cfg = compose_config(["scheduler=linear", "scheduler.warmup_epochs=1", "scheduler.min_lr=0.01"])
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, cfg.scheduler, epochs=5, updates_per_epoch=10)
    lrs = []
    for update in range(50):
        scheduler.step_update(update)
        lrs.append(optimizer.param_groups[0]["lr"])
    assert lrs[0] == pytest.approx(1e-5) and lrs[0] < lrs[5] < lrs[9]  # the warm-up climbs
    # then the lr follows a straight line from lr (at update 0: timm counts the warm-up inside
    # the schedule, as for cosine) down to min_lr at the schedule's end
    for t in range(10, 50):
        assert lrs[t] == pytest.approx(0.01 + 0.99 * (1 - t / 50)), t
