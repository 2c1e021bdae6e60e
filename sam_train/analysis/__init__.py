"""Sharpness analysis of trained networks (the ``sam-analyze`` command)."""

from sam_train.analysis.measures import (
    filter_normalized_direction,
    hessian_trace,
    landscape_1d,
    landscape_2d,
    sam_sharpness,
    top_hessian_eigenvalue,
)
from sam_train.analysis.objective import ModelObjective, Objective

__all__ = [
    "ModelObjective",
    "Objective",
    "filter_normalized_direction",
    "hessian_trace",
    "landscape_1d",
    "landscape_2d",
    "sam_sharpness",
    "top_hessian_eigenvalue",
]
