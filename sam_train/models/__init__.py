"""Models: CIFAR-sized and digits networks registered in timm's registry, and the factory.

Importing this package registers ``wrn28_10``, ``wrn16_8``, ``wrn16_4``, ``digits_cnn`` and the
SAM paper's other models (``shake_shake26_2x96d``, ``pyramidnet272_a200``,
``pyramidnet272_a200_shakedrop``, ``cifar_resnet32``), so
``timm.create_model("wrn28_10", num_classes=100)`` works like any timm model.
"""

from sam_train.models import (  # noqa: F401  (registers the models)
    cifar_resnet,
    pyramidnet,
    shake_shake,
    small_cnn,
    wide_resnet,
)
from sam_train.models.factory import create_model

__all__ = ["create_model"]
