"""CIFAR's numbers, declared once for the data pipeline, the GPU loader and the CIFAR models'
pretrained configs. Torch-free; the config schema keeps its own copies of the names it
validates (``CIFAR_IMAGE_SIZE``, ``AUGMENTATIONS``) so the validator loads no torch:
tests/test_imports.py checks that they agree."""

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# CIFAR's own resolution; another dataset.image_size upsamples (fine-tuning a model
# pretrained at that size), which the 32 px augmentations and the GPU loader do not do.
CIFAR_IMAGE_SIZE = 32
CIFAR_AUGMENTATIONS = ("basic", "cutout", "autoaugment")  # the augment group's pipelines
