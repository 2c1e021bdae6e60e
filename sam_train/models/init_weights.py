"""Start a model from saved weights (``model.init_from``): a sam-train checkpoint or a plain
state dict (timm's ``.pth``/``.bin``/``.safetensors`` files, ``{"state_dict": ...}`` files).

This is not a resume: only weights are read. A classifier whose shape differs (another class
count) keeps the model's fresh initialisation, as timm's pretrained loading does for a new
``num_classes``; every other key must fit unless ``strict`` is off. What was matched, left
out and ignored is returned and logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sam_train import checkpoint
from sam_train.errors import CheckpointError

log = logging.getLogger("sam_train")


@dataclass(frozen=True)
class InitReport:
    """How a state dict met the model."""

    matched: tuple[str, ...]
    missing: tuple[str, ...]  # model keys the file lacks (they keep their initialisation)
    unexpected: tuple[str, ...]  # file keys the model lacks (ignored)
    head_reset: tuple[str, ...]  # classifier keys of another shape (re-initialised)
    mismatched: tuple[str, ...]  # other keys of another shape (refused when strict)


def read_state_dict(path: str | Path, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """The weights in ``path``: a sam-train checkpoint's model (or its EMA weights with
    ``use_ema``), or what ``timm.models.load_state_dict`` finds in any other file."""
    import timm.models

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model.init_from={path}: no such file")
    try:
        if path.suffix == ".safetensors":
            return dict(timm.models.load_state_dict(str(path), use_ema=use_ema))
        loaded = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated zip, pickle garbage, a foreign format
        reason = " ".join(str(err).split())
        raise CheckpointError(
            f"model.init_from={path} is not a readable weights file: {reason}"
        ) from err
    if checkpoint.is_checkpoint(loaded):
        return _sam_train_weights(loaded, path, use_ema)
    if isinstance(loaded, dict):
        for key in (("state_dict_ema", "model_ema") if use_ema else ()) + ("state_dict", "model"):
            if isinstance(loaded.get(key), dict):
                loaded = loaded[key]
                break
    if not isinstance(loaded, dict) or not all(
        isinstance(v, torch.Tensor) for v in loaded.values()
    ):
        raise CheckpointError(f"model.init_from={path} holds no state dict of tensors")
    from timm.models import clean_state_dict  # strips DDP's "module." prefix

    return clean_state_dict(loaded)


def _sam_train_weights(saved: dict, path: Path, use_ema: bool) -> dict[str, torch.Tensor]:
    if not use_ema:
        return saved[checkpoint.MODEL]
    weights = checkpoint.ema_weights(saved)
    if weights is None:
        raise CheckpointError(
            f"model.init_ema=true but {path} holds no EMA weights; set model.init_ema=false"
        )
    return weights


def classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier: timm's ``default_cfg['classifier']`` names
    it; else the module ``get_classifier()`` returns."""
    names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    prefixes = [names] if isinstance(names, str) else list(names or ())
    if not prefixes and hasattr(model, "get_classifier"):
        head = model.get_classifier()
        prefixes = [name for name, module in model.named_modules() if module is head and name]
    own = model.state_dict()
    return {key for key in own for prefix in prefixes if key.startswith(f"{prefix}.")}


def match_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> InitReport:
    """Compare ``state`` with the model's keys and shapes."""
    own = model.state_dict()
    head = classifier_keys(model)
    shared = sorted(set(own) & set(state))
    differ = [key for key in shared if tuple(state[key].shape) != tuple(own[key].shape)]
    return InitReport(
        matched=tuple(key for key in shared if key not in differ),
        missing=tuple(sorted(set(own) - set(state))),
        unexpected=tuple(sorted(set(state) - set(own))),
        head_reset=tuple(key for key in differ if key in head),
        mismatched=tuple(
            f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}"
            for key in differ
            if key not in head
        ),
    )


def _few(keys: tuple[str, ...]) -> str:
    more = f" and {len(keys) - 4} more" if len(keys) > 4 else ""
    return ", ".join(keys[:4]) + more


def init_model_weights(
    model: nn.Module, path: str | Path, *, strict: bool = True, use_ema: bool = False
) -> InitReport:
    """Load the weights of ``path`` into ``model`` in place; return and log the match.

    ``strict``: any missing, unexpected or mis-shaped key other than a re-initialised
    classifier is a CheckpointError; otherwise those keys are logged and left as built.
    """
    state = read_state_dict(path, use_ema=use_ema)
    report = match_state_dict(model, state)
    head = classifier_keys(model)
    problems = [
        f"{label}: {_few(keys)}"
        for label, keys in (
            ("missing", tuple(key for key in report.missing if key not in head)),
            ("unexpected", report.unexpected),
            ("shape", report.mismatched),
        )
        if keys
    ]
    if strict and problems:
        raise CheckpointError(
            f"model.init_from={path} does not fit {type(model).__name__} "
            f"({'; '.join(problems)}); set model.init_strict=false to load what fits"
        )
    if not report.matched:
        raise CheckpointError(f"model.init_from={path} shares no weights with the model")
    model.load_state_dict({key: state[key] for key in report.matched}, strict=False)
    log.info(
        "model.init_from=%s: %d tensors loaded, %d missing, %d unexpected%s",
        path,
        len(report.matched),
        len(report.missing),
        len(report.unexpected),
        f"; classifier re-initialised ({_few(report.head_reset)})" if report.head_reset else "",
    )
    for problem in problems:
        log.warning("model.init_from: %s", problem)
    return report
