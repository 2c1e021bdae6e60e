"""Models registered in timm's registry, with the published parameter counts."""

from __future__ import annotations

import pytest
import timm
import torch

import sam_train.models  # noqa: F401  (registers the models)
from sam_train.config import ConfigError
from sam_train.models import create_model


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("name", "num_classes", "expected_millions"),
    [("wrn28_10", 100, 36.5), ("wrn28_10", 10, 36.5), ("wrn16_8", 10, 11.0)],
)
def test_wide_resnet_parameter_counts(name, num_classes, expected_millions):
    model = timm.create_model(name, num_classes=num_classes)
    assert _params(model) / 1e6 == pytest.approx(expected_millions, abs=0.05)


def test_registered_models_run_on_their_input_sizes():
    wrn = timm.create_model("wrn16_4", num_classes=100)
    assert wrn(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    cnn = timm.create_model("digits_cnn", num_classes=10, in_chans=1)
    assert cnn(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert "wrn28_10" in timm.list_models("wrn*")


def test_any_timm_model_by_name_with_kwargs():
    model = create_model("resnet18", num_classes=7, in_chans=3, drop_rate=0.3)
    assert model.get_classifier().out_features == 7
    assert model.drop_rate == 0.3


def test_unknown_model_name_suggests_close_ones():
    with pytest.raises(ConfigError, match="resnet18"):
        create_model("resnet_18", num_classes=10, in_chans=3)


# Every model of this package, shrunk where its default is too big for a unit test.
SMALL_VARIANTS = {
    "digits_cnn": ({"in_chans": 1}, (1, 8, 8)),
    "wrn16_4": ({}, (3, 32, 32)),
    "cifar_resnet32": ({"depth": 8}, (3, 32, 32)),
    "shake_shake26_2x96d": ({"depth": 8, "base_width": 8}, (3, 32, 32)),
    "pyramidnet272_a200_shakedrop": ({"depth": 11, "alpha": 12}, (3, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(SMALL_VARIANTS))
def test_models_follow_timms_classifier_interface(name):
    kwargs, input_size = SMALL_VARIANTS[name]
    x = torch.randn(4, *input_size)
    model = timm.create_model(name, num_classes=7, drop_rate=0.5, **kwargs).eval()
    features = model.forward_head(model.forward_features(x), pre_logits=True)
    assert features.shape == (4, model.num_features)
    assert torch.allclose(model(x), model.get_classifier()(features), atol=1e-6)

    model.reset_classifier(3)
    assert model.num_classes == 3 and model(x).shape == (4, 3)
    model.reset_classifier(0)
    assert torch.equal(model(x), features)  # num_classes=0: pooled features, as in timm
    headless = timm.create_model(name, num_classes=0, **kwargs).eval()
    assert headless(x).shape == (4, model.num_features)


def test_head_dropout_follows_drop_rate_except_in_wrn_whose_dropout_is_in_the_blocks():
    cnn = timm.create_model("digits_cnn", num_classes=0, drop_rate=0.5).train()
    feature_map = cnn.forward_features(torch.randn(8, 1, 8, 8))
    dropped = (cnn.forward_head(feature_map) == 0).sum() - (feature_map.mean((2, 3)) == 0).sum()
    assert dropped > 0.3 * 8 * cnn.num_features  # about half the pooled features
    wrn = timm.create_model("wrn16_4", num_classes=0, drop_rate=0.5).train()
    assert wrn.head_drop_rate == 0 and wrn.drop_rate == 0.5
    assert isinstance(wrn.stages[0][0].drop, torch.nn.Dropout)


@pytest.mark.parametrize("name", sorted(SMALL_VARIANTS))
def test_a_bad_drop_rate_is_refused_when_the_model_is_built(name):
    kwargs, _ = SMALL_VARIANTS[name]
    with pytest.raises(ConfigError, match="dropout probability"):
        create_model(name, num_classes=3, in_chans=kwargs.pop("in_chans", 3), drop_rate=2, **kwargs)
