"""The training step never waits for the device: no value is read back to the host per step.

A ``.item()``, ``bool(tensor)``, ``float(tensor)`` or ``if tensor:`` dispatches
``aten._local_scalar_dense``, which on a GPU blocks until every queued kernel has run; a
dispatch mode records each one (``tolist``/``numpy``/``cpu`` are watched directly, since on
CPU tensors they bypass the dispatcher).
"""

from __future__ import annotations

import pytest
import timm.scheduler
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sam_train.engine import Engine
from sam_train.sam import SAM


class HostReads(TorchDispatchMode):
    """Records the ops that copy a tensor's value to the host."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def _watch_conversions(monkeypatch, reads: list[str]) -> None:
    for name in ("tolist", "numpy", "cpu"):
        original = getattr(torch.Tensor, name)

        def spy(self, *args, _name=name, _original=original, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, spy)


def _engine(**kwargs) -> Engine:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    scheduler = timm.scheduler.CosineLRScheduler(optimizer, t_initial=100, warmup_t=5)
    return Engine(
        model, optimizer, nn.CrossEntropyLoss(), torch.device("cpu"), scheduler=scheduler, **kwargs
    )


def _batches(count: int, size: int = 8):
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 3, 6, 6, generator=gen), torch.randint(0, 5, (size,), generator=gen))
        for _ in range(count)
    ]


@pytest.mark.parametrize(("skip_nonfinite", "reads_per_step"), [(False, 0), (True, 1)])
def test_sam_step_reads_nothing_back_to_the_host(monkeypatch, skip_nonfinite, reads_per_step):
    """Sync-free with trainer.skip_nonfinite=false; the default pays exactly one read a step
    (is the final gradient finite?) to keep a NaN away from the weights."""
    engine = _engine(
        clip_grad_norm=1.0, accum_steps=2, precision="bf16", skip_nonfinite=skip_nonfinite
    )
    engine.model.train()
    batches = _batches(3)
    engine.train_step(*batches[0])  # lazy optimizer state
    reads: list[str] = []
    _watch_conversions(monkeypatch, reads)
    with HostReads() as mode:
        for images, targets in batches[1:]:
            engine.train_step(images, targets)
        assert engine.global_step == 3
    assert len(mode.reads) == 2 * reads_per_step
    assert reads == [] or skip_nonfinite
    with HostReads() as mode:  # the detector sees a read when there is one
        engine.optimizer.last_grad_norm.item()
    assert mode.reads


def test_epoch_reads_values_only_at_the_logging_interval(monkeypatch):
    engine = _engine(log_every=3, skip_nonfinite=False)
    reads: list[str] = []
    _watch_conversions(monkeypatch, reads)
    with HostReads() as mode:
        stats = engine.train_one_epoch(_batches(6), epoch=0, epochs=1, steps_per_epoch=6)
    # Two logging windows (steps 3 and 6), each reading the window loss and SAM's grad norm.
    assert len(mode.reads) == 4 and reads == []
    assert stats.count == 48
