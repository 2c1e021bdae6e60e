"""Models: CIFAR-sized and digits networks registered in timm's registry, and the factory.

Importing this package registers ``wrn28_10``, ``wrn16_8``, ``wrn16_4`` and ``digits_cnn`` so
``timm.create_model("wrn28_10", num_classes=100)`` works like any timm model.
"""

from sam_train.models import small_cnn, wide_resnet  # noqa: F401  (registers the models)
from sam_train.models.factory import create_model

__all__ = ["create_model"]
