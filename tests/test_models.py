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
