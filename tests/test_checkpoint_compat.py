"""Checkpoints written before the format moved into one module keep loading and resume
exactly.

``fixtures/main_814c447_step30.pt`` is ``checkpoints/step_000000030.pt`` of this run, written
by main at 814c447 (mid-epoch 2, with the EMA's state under its old key ``"ModelEMA"``)::

    sam-train <OLD_RUN> checkpoint.keep_last=3 hydra.run.dir=...
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import QUICK, run_in_process

from sam_train.callbacks import ModelEMA, WandbLogger
from sam_train.checkpoint import callback_states, ema_weights, load_checkpoint, run_state
from sam_train.trainer import Callback

OLD_CHECKPOINT = Path(__file__).parent / "fixtures" / "main_814c447_step30.pt"
OLD_RUN = [
    *QUICK,
    "model.kwargs.width=2",
    "model.kwargs.drop_rate=0.2",
    "dataset.label_noise=0.2",
    "ema.decay=0.9",
    "checkpoint.every_n_steps=30",
    "logger=none",
]


def _assert_equal(a: object, b: object, where: str) -> None:
    """Nested dicts, lists and tensors equal bit for bit."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            _assert_equal(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal(x, y, f"{where}[{index}]")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), f"{where} differs"
    else:
        assert a == b, where


def test_the_old_checkpoint_loads():
    state = load_checkpoint(OLD_CHECKPOINT)
    assert run_state(state).global_step == 30
    assert ModelEMA.state_key in state["callbacks"]  # "ModelEMA", the class name it had
    weights = ema_weights(state)
    assert weights is not None and weights.keys() == state["model"].keys()


class _Counter(Callback):
    state_key = "counter"

    def __init__(self) -> None:
        self.count = 3

    def state_dict(self) -> dict:
        return {"count": self.count}


class _RenamedCounter(_Counter):
    pass


class _Keyless(Callback):
    def state_dict(self) -> dict:
        return {}


def test_callbacks_are_keyed_by_their_state_key_not_their_class_name():
    assert callback_states([_RenamedCounter(), Callback()]) == {"counter": {"count": 3}}
    assert WandbLogger.state_key == "WandbLogger"  # what checkpoints already hold
    with pytest.raises(TypeError, match="_Keyless needs a state_key"):
        callback_states([_Keyless()])
    with pytest.raises(TypeError, match="needs a state_key of its own"):
        callback_states([_Counter(), _RenamedCounter()])


def test_a_resume_from_an_old_checkpoint_is_bit_identical_to_the_uninterrupted_run(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    # The old code's kernel: SGD's fused kernel (today's default) differs from foreach in the
    # last bits; the resumed run keeps the kernel its checkpoint's groups were written with.
    kernel = "optimizer.fused=false"
    assert run_in_process([*OLD_RUN, kernel, f"hydra.run.dir={full}"])[0] == 0
    code, err = run_in_process([*OLD_RUN, f"resume={OLD_CHECKPOINT}", f"hydra.run.dir={resumed}"])
    assert code == 0, err
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 42
    for saved in (a, b):  # fused=False (asked) and None (torch's default for old groups)
        for group in saved["optimizer"]["param_groups"]:
            assert not group.pop("fused")
    for key in ("model", "optimizer", "callbacks"):
        _assert_equal(a[key], b[key], key)
    assert b["callbacks"]["ModelEMA"]["module"], "the EMA's weights are missing"
