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
import torch.distributed as dist
from conftest import REQUIRES, TINY_RUN
from sam_reference import sam_step
from torch import nn

from sam_train.build import build_run
from sam_train.callbacks import Callback
from sam_train.callbacks.ema import ModelEMA
from sam_train.data.loaders import Loaders
from sam_train.errors import NonFiniteError
from sam_train.profiling import Allocations, HostReads, tensor_bytes
from sam_train.run import Run
from sam_train.sam import SAM, VARIANTS
from sam_train.state import RunState
from sam_train.step import SAMStep
from sam_train.strategy import DDPStrategy, DistInfo, FSDPStrategy, SingleProcess
from sam_train.trainer import Trainer

CPU = torch.device("cpu")


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


@pytest.mark.parametrize("skip_nonfinite", [False, True])
def test_sam_step_reads_nothing_back_to_the_host(monkeypatch, skip_nonfinite):
    """Sync-free whether or not non-finite steps are skipped (the skip is decided on the
    device). Nothing converts a tensor (tolist, numpy, cpu), and the step leaves the
    learning-rate schedule alone."""
    step = _step(clip_grad_norm=1.0, accum_steps=2, precision="bf16", skip_nonfinite=skip_nonfinite)
    step.check_every = None  # the trainer reads the skipped-step counts at its interval
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
    assert mode.reads == []
    assert reads == []
    assert step.param_groups[0]["lr"] == lr, "the schedule is the caller's"
    with HostReads() as mode:  # the detector sees a read when there is one
        step.optimizer.last_grad_norm.item()
    assert mode.reads


#: Every default configuration the issue names (the step as build.py builds it).
CONFIGURATIONS = {
    "fp32": [],
    "bf16": ["trainer.amp=bf16"],
    "fp16": ["trainer.amp=fp16"],
    **{
        f"sam.name={name}": [f"sam.name={name}", *REQUIRES.get(("sam", name), [])]
        for name in VARIANTS
    },
    "sgd": ["sam.name=none"],
    "sgd foreach (the masked copy)": ["optimizer.fused=false"],
    "adamw fused": ["optimizer.name=adamw", "optimizer.fused=true"],
    "accumulation": ["trainer.accum_steps=2"],
    "clipping": ["trainer.clip_grad_norm=1.0"],
    "m-sharpness": ["sam.m=4"],
    "fp16 + clipping + accumulation": [
        "trainer.amp=fp16",
        "trainer.clip_grad_norm=1.0",
        "trainer.accum_steps=2",
    ],
}


def _count_step_reads(monkeypatch, run, steps: int = 4) -> tuple[list[str], list[str]]:
    """Host reads of ``steps`` steps after two warm-up steps (lazy optimizer state)."""
    gen = torch.Generator().manual_seed(0)
    batches = [
        (torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen))
        for _ in range(steps + 2)
    ]
    # SAF keeps outputs per example: its loader hands the step their indices
    indices = [torch.arange(8)] if run.loaders.train.dataset.dataset.with_indices else []
    for images, targets in batches[:2]:
        run.step(images, targets, *indices)
    conversions: list[str] = []
    with monkeypatch.context() as patch:
        _watch_conversions(patch, conversions)
        with HostReads() as mode:
            outputs = [run.step(images, targets, *indices) for images, targets in batches[2:]]
    assert all(bool(output.finite) for output in outputs)
    return mode.reads, conversions


@pytest.mark.parametrize("name", list(CONFIGURATIONS))
def test_every_default_configuration_reads_nothing_per_step(monkeypatch, compose_cfg, name):
    torch.manual_seed(0)
    run = build_run(compose_cfg([*TINY_RUN, *CONFIGURATIONS[name]]))
    run.train_model.train()
    assert run.step.skip_nonfinite and run.step.check_every is None  # the defaults
    # A variant that must read the device to decide whether to compute (AE-SAM's threshold
    # on ||g||) declares how many reads a step costs; every other one costs none.
    per_step = getattr(run.optimizer, "host_reads_per_step", 0)
    reads, conversions = _count_step_reads(monkeypatch, run)
    assert len(reads) == 4 * per_step and conversions == []


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", [DDPStrategy, FSDPStrategy])
def test_ddp_and_fsdp_steps_read_nothing_per_step(
    monkeypatch, compose_cfg, one_process_group, strategy
):
    """The wrapped step (no_sync, the all-reduce, FSDP's DTensor gradients and the masked
    update of their shards) in a one-process group."""
    torch.manual_seed(0)
    run = build_run(compose_cfg(TINY_RUN), strategy(DistInfo(), CPU))
    run.train_model.train()
    assert run.train_model is not run.model or strategy is FSDPStrategy
    assert _count_step_reads(monkeypatch, run) == ([], [])


class _Batches(list):
    """Batches with the sampler interface the trainer positions each epoch with."""

    sampler = SimpleNamespace(set_epoch=lambda epoch, skip=0: None)


class _LoggedSteps(Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []

    def on_log(self, trainer, state, metrics) -> None:
        self.steps.append(metrics["step"])


def test_epoch_reads_values_only_at_the_logging_interval(monkeypatch):
    """The default step (non-finite steps skipped) with an EMA: every value is read at the
    logging interval, none in between."""
    step = _step(check_every=None)
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
    ema = ModelEMA(0.9)
    state = RunState()
    lr = step.param_groups[0]["lr"]
    trainer = Trainer(run, [logged, ema], log_every=3)
    ema.on_fit_start(trainer, state)
    step(*_batches(1)[0])  # the first step reads once: a skipped one must create no state
    reads: list[str] = []
    _watch_conversions(monkeypatch, reads)
    with HostReads() as mode:
        trainer._train_epoch(state, epoch=0, start_step=0)
    # Two logging windows (steps 3 and 6), each reading the window loss and SAM's grad norm,
    # and the skipped-step counts (tolist); the epoch's totals are read once, at its end.
    assert logged.steps == [3, 6]
    assert len(mode.reads) == 4 and reads == ["tolist"] * 3
    assert state.images_seen == 48 and state.global_step == 6 and state.skipped_steps == 0
    assert step.param_groups[0]["lr"] != lr, "the trainer advanced the schedule every step"


class _NaNAfter(nn.Module):
    """A linear model whose output is NaN on the calls listed in ``bad``."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(6, 3)
        self.norm = nn.BatchNorm1d(3)
        self.bad: set[int] = set()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.norm(self.linear(x))
        self.calls += 1
        return out * float("nan") if self.calls in self.bad else out


def _state_tensors(step: SAMStep) -> list[torch.Tensor]:
    tensors = [t.detach().clone() for t in step.model.state_dict().values()]
    for state in step.base_optimizer.state.values():
        tensors += [v.clone() for v in state.values() if isinstance(v, torch.Tensor)]
    return tensors


@pytest.mark.parametrize(
    ("optimizer", "kwargs"),
    [
        (torch.optim.SGD, {"momentum": 0.9, "fused": True}),
        (torch.optim.SGD, {"momentum": 0.9, "foreach": True}),
        (torch.optim.AdamW, {"fused": True}),
        (torch.optim.AdamW, {"foreach": True}),
    ],
    ids=["sgd fused", "sgd foreach", "adamw fused", "adamw foreach"],
)
def test_a_skipped_step_is_masked_on_the_device(optimizer, kwargs):
    """Once the optimizer has state, a non-finite step is skipped without a read: weights,
    momentum (Adam's step count too) and running statistics stay bit for bit; the guard
    counts it on the device and raises only when checked. Non-fused Adam reads its own step
    count (a CPU tensor, no device sync on a GPU), so only the others are counted here."""
    torch.manual_seed(0)
    model = _NaNAfter()
    sam = SAM(model.parameters(), optimizer, rho=0.05, lr=0.1, **kwargs)
    step = SAMStep(model, sam, nn.CrossEntropyLoss(), CPU, max_bad_steps=2, check_every=None)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    step(x, y)  # creates the optimizer state
    before = _state_tensors(step)
    model.bad = {3, 5, 7}  # the first pass of the next three steps
    with HostReads() as mode:
        outputs = [step(x, y) for _ in range(2)]
    assert mode.reads == [] or (optimizer is torch.optim.AdamW and "foreach" in kwargs)
    assert not any(bool(output.finite) for output in outputs)
    after = _state_tensors(step)
    assert len(after) == len(before) and all(map(torch.equal, before, after))
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        step.nonfinite.check()
    model.bad = set()
    assert bool(step(x, y).finite)
    assert not torch.equal(model.linear.weight, before[0])
    assert step.nonfinite.check() == 0 and step.nonfinite.skipped == 2


@pytest.mark.parametrize(
    ("options", "buffers"),
    [
        ({}, 1),
        ({"p": float("inf")}, 1),
        ({"include_weight_decay": True, "weight_decay": 5e-4}, 1),
        ({"inner_steps": 2}, 1),
        ({"adaptive": True}, 2),  # ASAM's T = |w| + eta
        # ESAM's draw (seed 3: every tensor at step 1, half of them at step 2): no mask tensor
        ({"perturb_fraction": 0.5, "seed": 3}, 1),
    ],
    ids=["sam", "p=inf", "weight decay", "two ascent steps", "asam", "esam"],
)
def test_sam_bookkeeping_allocates_the_backup_and_no_other_parameter_sized_tensor(options, buffers):
    """The ascent is computed in the gradients' own storage: the first step allocates the
    weight backup (once) and, for ASAM, one more parameter-sized tensor; a few bytes more are
    the norms. Restoring the weights allocates nothing."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    params = list(model.parameters())
    sam = SAM(params, torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, **options)
    x, y = torch.randn(16, 64), torch.randint(0, 10, (16,))

    def closure() -> None:
        nn.functional.cross_entropy(model(x), y).backward()

    closure()
    with Allocations() as first:
        sam.first_step(zero_grad=True, ascent_closure=closure if "inner_steps" in options else None)
    closure()
    with Allocations() as restore:
        sam.restore()
    param_bytes = tensor_bytes(params)
    small = 64 * len(params)  # the per-tensor norms and their sum
    if "inner_steps" not in options:  # (its closure's backward allocates gradients)
        assert buffers * param_bytes <= first.peak <= buffers * param_bytes + small
    assert restore.allocated == 0
    closure()  # a later step reuses the backup
    with Allocations() as again:
        sam.first_step(zero_grad=True, ascent_closure=closure if "inner_steps" in options else None)
    if "inner_steps" not in options:
        assert again.peak <= (buffers - 1) * param_bytes + small


def test_the_trainer_stops_a_diverged_run_at_the_logging_interval():
    """max_bad_steps is enforced by the read at the logging step: skipped steps before it cost
    no sync, and the run stops there with the count of skipped steps in the error."""
    torch.manual_seed(0)
    model = _NaNAfter()
    sam = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9, fused=True)
    step = SAMStep(model, sam, nn.CrossEntropyLoss(), CPU, max_bad_steps=2, check_every=None)
    batches = [(torch.randn(8, 6), torch.randint(0, 3, (8,))) for _ in range(6)]
    run = Run(
        model=model,
        train_model=model,
        optimizer=sam,
        scheduler=_schedule(step),
        step=step,
        strategy=SingleProcess(device=CPU),
        data=None,
        loaders=Loaders(train=_Batches(batches), test=[]),
        device=CPU,
        epochs=1,
        steps_per_epoch=6,
        per_device_batch=8,
    )
    step(*batches[0])  # optimizer state: later skips are masked on the device
    model.bad = set(range(model.calls + 1, model.calls + 100))
    state = RunState()
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        Trainer(run, [], log_every=3)._train_epoch(state, epoch=0, start_step=0)
    assert state.global_step == 3, "stopped at the first logging step, not before"
