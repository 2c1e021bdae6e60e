"""Datasets (digits, CIFAR, ImageNet folders), transforms, label noise and loaders."""

from sam_train.data.datasets import DatasetError, build_datasets
from sam_train.data.label_noise import apply_label_noise
from sam_train.data.loaders import build_loaders

__all__ = ["DatasetError", "apply_label_noise", "build_datasets", "build_loaders"]
