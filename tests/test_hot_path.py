"""The training step never waits for the device: no value is read back to the host per step.

A ``.item()``, ``bool(tensor)``, ``float(tensor)`` or ``if tensor:`` dispatches
``aten._local_scalar_dense``, which on a GPU blocks until every queued kernel has run; a
dispatch mode records each one (``tolist``/``numpy``/``cpu`` are watched directly, since on
CPU tensors they bypass the dispatcher).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import timm.scheduler
import torch
from sam_reference import sam_step
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from sam_train.callbacks import Callback
from sam_train.data.loaders import Loaders
from sam_train.run import Run
from sam_train.state import RunState
from sam_train.step import SAMStep
from sam_train.strategy import SingleProcess
from sam_train.trainer import Trainer

CPU = torch.device("cpu")


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


def _step(**kwargs) -> SAMStep:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 5),
    )
    return sam_step(model, optimizer={"rho": 0.05, "lr": 0.1, "momentum": 0.9}, **kwargs)


def _schedule(step: SAMStep) -> timm.scheduler.CosineLRScheduler:
    """A warm-up that moves the learning rate on every update, as training schedules it."""
    return timm.scheduler.CosineLRScheduler(
        step.optimizer, t_initial=100, warmup_t=5, warmup_lr_init=1e-3, t_in_epochs=False
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
    (is the final gradient finite?) to keep a NaN away from the weights. Neither converts a
    tensor (tolist, numpy, cpu), and the step leaves the learning-rate schedule alone."""
    step = _step(clip_grad_norm=1.0, accum_steps=2, precision="bf16", skip_nonfinite=skip_nonfinite)
    _schedule(step)
    lr = step.param_groups[0]["lr"]
    step.model.train()
    batches = _batches(3)
    step(*batches[0])  # lazy optimizer state
    reads: list[str] = []
    _watch_conversions(monkeypatch, reads)
    with HostReads() as mode:
        outputs = [step(images, targets) for images, targets in batches[1:]]
    assert step.steps_taken == 3 and all(output.finite for output in outputs)
    assert len(mode.reads) == 2 * reads_per_step
    assert reads == []
    assert step.param_groups[0]["lr"] == lr, "the schedule is the caller's"
    with HostReads() as mode:  # the detector sees a read when there is one
        step.optimizer.last_grad_norm.item()
    assert mode.reads


class _Batches(list):
    """Batches with the sampler interface the trainer positions each epoch with."""

    sampler = SimpleNamespace(set_epoch=lambda epoch, skip=0: None)


class _LoggedSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_log(self, trainer, state, metrics) -> None:
        self.steps.append(metrics["step"])


def test_epoch_reads_values_only_at_the_logging_interval(monkeypatch):
    step = _step(skip_nonfinite=False)
    scheduler = _schedule(step)
    run = Run(
        model=step.model,
        train_model=step.model,
        optimizer=step.optimizer,
        scheduler=scheduler,
        step=step,
        strategy=SingleProcess(device=CPU),
        data=None,
        loaders=Loaders(train=_Batches(_batches(6)), test=[]),
        device=CPU,
        epochs=1,
        steps_per_epoch=6,
        per_device_batch=8,
    )
    logged = _LoggedSteps()
    state = RunState()
    lr = step.param_groups[0]["lr"]
    reads: list[str] = []
    _watch_conversions(monkeypatch, reads)
    with HostReads() as mode:
        Trainer(run, [logged], log_every=3)._train_epoch(state, epoch=0, start_step=0)
    # Two logging windows (steps 3 and 6), each reading the window loss and SAM's grad norm;
    # the epoch's totals are read once, at its end.
    assert logged.steps == [3, 6]
    assert len(mode.reads) == 4 and reads == ["tolist"]
    assert state.images_seen == 48 and state.global_step == 6
    assert step.param_groups[0]["lr"] != lr, "the trainer advanced the schedule every step"
