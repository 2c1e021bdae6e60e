"""Workloads, and the runs sam-train builds for them (``sam_train.build``, as training does)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from sam_train import build
from sam_train.build import Run
from sam_train.compose import compose_config as compose
from sam_train.strategy import Strategy

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class Workload:
    """A model on a data set at a batch: what every section measures."""

    name: str
    model: str
    input_shape: tuple[int, int, int]  # the data set's images (make_batch's random batches)
    batch_size: int  # per process
    dataset: str
    num_classes: int = 10
    kwargs: dict[str, Any] = field(default_factory=dict)  # model.kwargs

    @property
    def label(self) -> str:
        c, h, w = self.input_shape
        return f"{self.model} {c}x{h}x{w} b{self.batch_size}"


def workloads(batch_size: int) -> dict[str, Workload]:
    """The quickstart CNN and WRN-16-4 at CIFAR size; the CNN also at its own 8x8 input."""
    return {
        "cnn_cifar": Workload("cnn_cifar", "digits_cnn", (3, 32, 32), batch_size, "cifar10"),
        "wrn16_4": Workload("wrn16_4", "wrn16_4", (3, 32, 32), batch_size, "cifar10"),
        "cnn_digits": Workload("cnn_digits", "digits_cnn", (1, 8, 8), 64, "digits"),
        # SAM's bookkeeping against a large model's step (--workloads resnet50; not in --quick)
        "resnet50": Workload("resnet50", "resnet50", (3, 32, 32), batch_size, "cifar10"),
        # For tests of this script: a few thousand parameters, milliseconds per step.
        "tiny": Workload("tiny", "digits_cnn", (1, 8, 8), 8, "digits", kwargs={"width": 4}),
    }


def run_overrides(
    work: Workload, base: list[str], cifar_root: str | None = None, world_size: int = 1
) -> list[str]:
    """The command line that trains ``work``: its data set, model and (global) batch.

    CIFAR is read from ``cifar_root`` (synthetic images in the real format, no download).
    """
    overrides = [
        *base,
        f"dataset={work.dataset}",
        f"model.name={work.model}",
        f"trainer.batch_size={work.batch_size * world_size}",
        *(f"+model.kwargs.{key}={value}" for key, value in work.kwargs.items()),
    ]
    if work.dataset.startswith("cifar"):
        if cifar_root is None:
            raise ValueError(f"workload {work.name} needs a CIFAR root")
        overrides += [
            f"dataset.root={cifar_root}",
            "dataset.download=false",
            "dataset.verify_checksums=false",
        ]
    return overrides


def bench_run(cfg: DictConfig, strategy: Strategy | None = None) -> Run:
    """``build.build_run``: the data, model, optimizer, schedule, wrap and step of training.

    Seeded first, so every mode of a comparison starts from the same weights.
    """
    torch.manual_seed(0)
    run = build.build_run(cfg, strategy or build.run_strategy(cfg))
    run.train_model.train()
    return run


def make_batch(work: Workload, device: torch.device, seed: int = 0) -> Batch:
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(work.batch_size, *work.input_shape, generator=gen)
    targets = torch.randint(0, work.num_classes, (work.batch_size,), generator=gen)
    return images.to(device), targets.to(device)


def train_step(run: Run, images: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    """One training step as ``Trainer`` takes it: ``run.step``, then the schedule's update."""
    updates = 0

    def step() -> None:
        nonlocal updates
        run.step(images, targets)
        updates += 1
        run.scheduler.step_update(num_updates=updates)

    return step


class MinimalSAMLoop:
    """SAM's two passes written out as a user would, with nothing around them.

    The same base optimizer (timm's, built from the same config) and schedule; the
    perturbation with multi-tensor ops; BatchNorm statistics kept to the first pass by
    zeroing the momentum (the common hand-written trick); w restored by subtracting e(w).
    """

    def __init__(
        self, model: nn.Module, cfg: DictConfig, device: torch.device, steps_per_epoch: int
    ) -> None:
        self.model = model
        no_sam = compose(["sam=none"]).sam
        self.optimizer = build.build_optimizer(model, cfg.optimizer, no_sam)
        self.scheduler = build.build_scheduler(
            self.optimizer, cfg.scheduler, cfg.trainer.epochs, steps_per_epoch
        )
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]
        self.norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
        self.rho = cfg.sam.rho
        self.loss_sum = torch.zeros((), device=device)
        self.steps = 0

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        loss = nn.functional.cross_entropy(self.model(images), targets)
        loss.backward()
        self.loss_sum += loss.detach()
        with torch.no_grad():
            grads = [p.grad for p in self.params]
            norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            e_w = torch._foreach_mul(grads, self.rho / (norm + 1e-12))
            torch._foreach_add_(self.params, e_w)
        self.optimizer.zero_grad(set_to_none=True)
        momenta = [m.momentum for m in self.norms]
        for m in self.norms:
            m.momentum = 0.0
        nn.functional.cross_entropy(self.model(images), targets).backward()
        for m, momentum in zip(self.norms, momenta, strict=True):
            m.momentum = momentum
        with torch.no_grad():
            torch._foreach_sub_(self.params, e_w)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1
        self.scheduler.step_update(num_updates=self.steps)
