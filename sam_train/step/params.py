"""The parameters of an optimizer's groups as one list, kept while the groups stay the same.

The step needs that list several times a step (each pass's gradient share, the gradients to
check and drop); rebuilding it is a Python loop over every parameter, a measurable share of a
small model's step on the CPU.
"""

from __future__ import annotations

import operator
from typing import Any

import torch


class ParamList:
    """``ParamList()(groups)``: ``[p for g in groups for p in g["params"]]``, rebuilt only when
    a group is added or removed, or a group's list of parameters is replaced or resized (a
    loaded state dict, ``add_param_group``). The list returned is shared: do not change it."""

    def __init__(self) -> None:
        self._lists: list[list[torch.Tensor]] = []  # held, so that their ids stay unique
        self._params: list[torch.Tensor] = []

    def __call__(self, groups: list[dict[str, Any]]) -> list[torch.Tensor]:
        lists = [group["params"] for group in groups]
        if (
            len(lists) != len(self._lists)
            or not all(map(operator.is_, lists, self._lists))
            or sum(map(len, lists)) != len(self._params)
        ):
            self._lists = lists
            self._params = [p for params in lists for p in params]
        return self._params
