"""Build a model by name through timm, with this package's models registered.

A bad ``model.kwargs`` value or an unavailable pretrained checkpoint ends in one
:class:`~sam_train.errors.ConfigError` line that names the key, never in a traceback from deep
inside a model's constructor or its first forward.
"""

from __future__ import annotations

import contextlib
import difflib
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import timm
import torch
from torch import nn

from sam_train.errors import ConfigError

# What a constructor raises for a keyword of the wrong type or value (timm asserts some).
_BAD_VALUE = (TypeError, ValueError, RuntimeError, AssertionError, KeyError)
# ... and what a forward raises for one of the wrong type (a shape error is the probe's).
_BAD_TYPE = (TypeError, ValueError)


def create_model(
    name: str,
    num_classes: int,
    in_chans: int,
    pretrained: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """``timm.create_model`` with a one-line ConfigError for an unknown name, a keyword the
    model rejects (when built or at its first forward) and pretrained weights that are not
    available."""
    _check_name(name)
    if pretrained and not timm.models.is_model_pretrained(name):
        raise ConfigError(
            f"model.pretrained=true but {name} has no pretrained weights: set "
            "model.pretrained=false"
        )
    try:
        with _offline_unless_reachable(pretrained):
            model = timm.create_model(
                name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs
            )
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError, connection errors
        if not pretrained:
            raise
        raise ConfigError(
            f"model.pretrained=true: {name}'s weights could not be fetched and are not in the "
            f"local cache ({type(err).__name__}); connect, or set model.pretrained=false"
        ) from err
    except _BAD_VALUE as err:
        if not kwargs:
            raise
        raise ConfigError(_rejected(name, num_classes, in_chans, kwargs, err)) from err
    if kwargs:
        _check_built(model, name, num_classes, in_chans, kwargs)
    return model


HUB_PROBE_SECONDS = 3.0  # a connection to the hub that takes longer counts as no network


@contextlib.contextmanager
def _offline_unless_reachable(pretrained: bool) -> Iterator[None]:
    """Without network huggingface_hub retries for about a minute before it looks in its
    cache: probe the hub once (a TCP connection, a few seconds at most) and, if it does not
    answer, read the weights from the local cache only (``HF_HUB_OFFLINE``), at once."""
    import huggingface_hub.constants as hub

    if not pretrained or hub.HF_HUB_OFFLINE or _hub_reachable(hub.ENDPOINT):
        yield
        return
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = False


def _hub_reachable(endpoint: str) -> bool:
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    own = [
        model
        for model in timm.list_models()
        if timm.models.model_entrypoint(model).__module__.startswith(f"{__package__}.")
    ]
    raise ConfigError(
        f"model.name={name!r} is not a timm model or one of sam_train's ({', '.join(own)}).{hint}"
    )


def _check_built(
    model: nn.Module, name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]
) -> None:
    """What a model accepts when built but cannot train with: a layer left without weights
    (``width=0``), or a keyword of the wrong type that only its forward reads (timm keeps
    ``drop_rate`` until then). The forward runs on the meta device: shapes only, no compute."""
    args = (name, num_classes, in_chans)
    empty = [n for n, p in model.named_parameters() if p.numel() == 0]
    if empty:
        culprit = _culprit(args, kwargs, _has_empty_layer, _BAD_VALUE)
        raise ConfigError(
            f"{_describe(culprit or kwargs)} leaves {name}'s {empty[0]} without weights "
            f"(shape {list(model.get_parameter(empty[0]).shape)})"
        )
    try:
        _probe_forward(*args, kwargs)
    except _BAD_TYPE as err:
        if _fails(_probe_forward, args, {}, _BAD_TYPE):
            return  # the probe's input does not suit this model: it tells nothing
        culprit = _culprit(args, kwargs, _probe_forward, _BAD_TYPE)
        raise ConfigError(
            f"{_describe(culprit or kwargs)} rejected by {name} at its first forward: "
            f"{_first_line(err)}"
        ) from err
    except Exception:  # e.g. a shape the probe's input got wrong: training, on the real
        return  # input, reports what is wrong (or nothing is)


def _rejected(
    name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any], err: Exception
) -> str:
    culprit = _culprit((name, num_classes, in_chans), kwargs, _build_on_meta, _BAD_VALUE)
    return f"{_describe(culprit or kwargs)} rejected by {name}: {_first_line(err)}"


def _culprit(
    args: tuple[str, int, int], kwargs: dict[str, Any], attempt: Callable[..., Any], errors: Any
) -> dict[str, Any] | None:
    """The first keyword that fails ``attempt`` on its own (None: only their combination)."""
    for key, value in kwargs.items():
        if _fails(attempt, args, {key: value}, errors):
            return {key: value}
    return None


def _fails(
    attempt: Callable[..., Any], args: tuple[str, int, int], kwargs: dict[str, Any], errors: Any
) -> bool:
    """Whether ``attempt(*args, kwargs)`` returns True or raises one of ``errors`` (any other
    exception: the attempt says nothing about these keywords)."""
    try:
        return attempt(*args, kwargs) is True
    except errors:
        return True
    except Exception:  # not one of ``errors``: not this keyword's fault
        return False


def _build_on_meta(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]):
    with torch.device("meta"):
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _has_empty_layer(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> bool:
    model = _build_on_meta(name, num_classes, in_chans, kwargs)
    return any(p.numel() == 0 for p in model.parameters())


def _probe_forward(name: str, num_classes: int, in_chans: int, kwargs: dict[str, Any]) -> None:
    """One training-mode forward of two meta images of the model's default input size."""
    model = _build_on_meta(name, num_classes, in_chans, kwargs).train()
    size = getattr(model, "pretrained_cfg", {}).get("input_size", (in_chans, 32, 32))
    model(torch.empty(2, in_chans, *size[1:], device="meta"))


def _describe(kwargs: dict[str, Any]) -> str:
    """``model.kwargs.width='abc' (str)``, for each keyword."""
    return ", ".join(
        f"model.kwargs.{key}={value!r} ({type(value).__name__})" for key, value in kwargs.items()
    )


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
