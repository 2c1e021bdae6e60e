"""Checkpoints written before the format moved into one module keep loading and resume
exactly.

``fixtures/main_814c447_step30.pt`` is ``checkpoints/step_000000030.pt`` of this run, written
by main at 814c447 (mid-epoch 2, with the EMA's state under its old key ``"ModelEMA"``)::

    sam-train <OLD_RUN> checkpoint.keep_last=3 hydra.run.dir=...
"""

from __future__ import annotations

from pathlib import Path

import torch
from conftest import run_in_process

from sam_train.checkpoint import load_checkpoint

OLD_CHECKPOINT = Path(__file__).parent / "fixtures" / "main_814c447_step30.pt"
OLD_RUN = [
    "experiment=quickstart",
    "trainer.epochs=2",
    "scheduler.warmup_epochs=1",
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
    assert state["global_step"] == 30
    assert "ModelEMA" in state["callbacks"]


def test_a_resume_from_an_old_checkpoint_is_bit_identical_to_the_uninterrupted_run(tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert run_in_process([*OLD_RUN, f"hydra.run.dir={full}"])[0] == 0
    code, err = run_in_process([*OLD_RUN, f"resume={OLD_CHECKPOINT}", f"hydra.run.dir={resumed}"])
    assert code == 0, err
    a = load_checkpoint(full / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 42
    for key in ("model", "optimizer", "callbacks"):
        _assert_equal(a[key], b[key], key)
    assert b["callbacks"]["ModelEMA"]["module"], "the EMA's weights are missing"
