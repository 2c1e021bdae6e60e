"""Hand-written SAM and the small models, batches and modules the step tests share.

``reference_sam`` uses plain autograd and ``torch.optim.SGD``: an independent computation the
SAM step (accumulation, m-sharpness, DDP modes, clipping) is compared with.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from sam_train.sam import MESA, SAM
from sam_train.sam.trajectory import TrajectorySAM
from sam_train.step import SAMStep
from sam_train.step.trajectory import TrajectoryLoss

CPU = torch.device("cpu")
RHO, LR, MOMENTUM = 0.5, 0.1, 0.9
GLOBAL_BATCH, STEPS = 16, 3


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))


def bn_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Linear(16, 3))


class MaskRecorder(nn.Module):
    """Dropout (p = 0.5) that remembers each mask it drew."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand_like(x) > 0.5).float()
        self.masks.append(mask)
        return x * mask * 2


class RunningMeanTracker(nn.Module):
    """Keeps a running mean of its input without being a BatchNorm subclass."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("running", torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.running.mul_(0.5).add_(0.5 * x.mean(0))
        return x


def batches(n: int = STEPS, size: int = GLOBAL_BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    return [
        (torch.randn(size, 6, generator=gen), torch.randint(0, 3, (size,), generator=gen))
        for _ in range(n)
    ]


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)


def sam_step(
    model: nn.Module, variant: type[SAM] = SAM, optimizer: dict | None = None, **kwargs
) -> SAMStep:
    """The tests' one step builder: ``variant`` over momentum SGD on ``model`` (a DDP-wrapped
    one needs ``strategy=``); ``optimizer`` overrides rho, lr, momentum or adds the variant's
    arguments; ``kwargs`` go to SAMStep. MESA's EMA follows the unwrapped model, and the
    trajectory variants get their loss, as ``build.py`` gives them."""
    arguments = {"rho": RHO, "lr": LR, "momentum": MOMENTUM, **(optimizer or {})}
    if variant is MESA:
        arguments["model"] = getattr(model, "module", model)
    sam = variant(model.parameters(), torch.optim.SGD, **arguments)
    loss = nn.CrossEntropyLoss()
    if isinstance(sam, TrajectorySAM):
        loss = TrajectoryLoss(loss, sam)
    return SAMStep(model, sam, loss, CPU, **kwargs)


def sgd_step(model: nn.Module, **kwargs) -> SAMStep:
    """The step without SAM: one pass of momentum SGD."""
    return SAMStep(model, sgd(model), nn.CrossEntropyLoss(), CPU, **kwargs)


def train(step: SAMStep, data, shard=lambda x: x) -> None:
    step.model.train()
    for x, y in data:
        step(shard(x), shard(y))


def closure_steps(model: nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    """``steps`` optimizer steps through ``opt.step(closure)`` on random 4-feature batches."""
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 4, generator=gen), torch.randint(0, 3, (16,), generator=gen)

        def closure(x=x, y=y):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.zero_grad()
        closure()
        opt.step(closure)


def weights(model: nn.Module) -> list[torch.Tensor]:
    model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return [p.detach().clone() for p in model.parameters()]


def close(a: list[torch.Tensor], b: list[torch.Tensor], atol: float = 1e-6) -> bool:
    return all(torch.allclose(p, q, rtol=0, atol=atol) for p, q in zip(a, b, strict=True))


def reference_sam(data, parts: int = 1, clip: float | None = None) -> list[torch.Tensor]:
    """SAM by hand on ``mlp()``: each of ``parts`` equal slices of a batch gets eps from its
    own gradient; the base step applies the mean of the slices' gradients at their perturbed
    points, clipped to norm ``clip`` if given."""
    model = mlp()
    params = list(model.parameters())
    optimizer = sgd(model)
    for x, y in data:
        total = [torch.zeros_like(p) for p in params]
        for xs, ys in zip(x.chunk(parts), y.chunk(parts), strict=True):
            grads = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
            saved = [p.detach().clone() for p in params]
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=RHO / (norm.item() + 1e-12))
            perturbed = torch.autograd.grad(F.cross_entropy(model(xs), ys), params)
            with torch.no_grad():
                for p, w in zip(params, saved, strict=True):
                    p.copy_(w)
            for t, g in zip(total, perturbed, strict=True):
                t += g / parts
        if clip is not None:
            norm = torch.linalg.vector_norm(torch.stack([t.norm() for t in total]))
            total = [t * min(1.0, clip / (norm.item() + 1e-6)) for t in total]
        for p, t in zip(params, total, strict=True):
            p.grad = t
        optimizer.step()
        optimizer.zero_grad()
    return weights(model)
