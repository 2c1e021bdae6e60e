"""The training loss on a fixed set of batches as a function of the weights.

Every measure in this package (sharpness, Hessian spectrum, loss landscape) evaluates one
deterministic function L(w): the mean loss over the same batches, with the model in eval mode
(running statistics fixed, no dropout). The weights are moved in place and restored exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

Vector = list[torch.Tensor]  # one tensor per parameter: a point or direction in weight space

#: Yields (mean loss of one batch, its share of the total) for the current weights.
BatchLosses = Callable[[], Iterable[tuple[torch.Tensor, float]]]


def dot(a: Vector, b: Vector) -> torch.Tensor:
    return torch.stack(
        [torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b, strict=True)]
    ).sum()


def norm(a: Vector) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(a)))


class Objective:
    """L(w) = sum_b share_b * loss_b(w) over fixed batches, with value, gradient and H v."""

    def __init__(self, params: list[torch.Tensor], batch_losses: BatchLosses) -> None:
        self.params = params
        self.batch_losses = batch_losses

    @classmethod
    def for_model(
        cls,
        model: nn.Module,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        criterion: nn.Module,
        chunk_size: int | None = None,
    ) -> Objective:
        """The model's mean loss over ``batches``, in eval mode.

        In eval mode the loss of an image does not depend on its batch, so the batches are
        regrouped into chunks of up to ``chunk_size`` images (default: all in one), fewer and
        larger forward passes; lower it if memory runs out.
        """
        model.eval()
        images = torch.cat([x for x, _ in batches])
        targets = torch.cat([y for _, y in batches])
        total = len(targets)
        chunks = list(
            zip(
                images.split(chunk_size or total),
                targets.split(chunk_size or total),
                strict=True,
            )
        )

        def batch_losses() -> Iterator[tuple[torch.Tensor, float]]:
            for x, y in chunks:
                yield criterion(model(x), y), len(y) / total

        return cls([p for p in model.parameters() if p.requires_grad], batch_losses)

    @torch.no_grad()
    def value(self) -> float:
        return sum(share * loss.item() for loss, share in self.batch_losses())

    def gradient(self) -> tuple[float, Vector]:
        """(L(w), grad L(w))."""
        total, grads = 0.0, [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for loss, share in self.batch_losses():
                parts = torch.autograd.grad(loss, self.params, allow_unused=True)
                torch._foreach_add_(grads, _zeros_for_none(parts, self.params), alpha=share)
                total += share * loss.item()
        return total, grads

    def hvp(self, v: Vector) -> Vector:
        """H(w) v by double backward (exact, one extra backward per batch)."""
        out = [torch.zeros_like(p) for p in self.params]
        with torch.enable_grad():
            for loss, share in self.batch_losses():
                grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
                grads = _zeros_for_none(grads, self.params)
                gv = dot(list(grads), v)
                if not gv.requires_grad:  # the loss is linear in every used parameter
                    continue
                parts = torch.autograd.grad(gv, self.params, allow_unused=True)
                torch._foreach_add_(out, _zeros_for_none(parts, self.params), alpha=share)
        return out

    @contextmanager
    def moved(self, offset: Vector) -> Iterator[None]:
        """Evaluate at w + offset inside the block; w is copied back exactly afterwards."""
        saved = [p.detach().clone() for p in self.params]
        with torch.no_grad():
            torch._foreach_add_(self.params, offset)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.params, saved)


def _zeros_for_none(tensors, params) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if t is None else t for t, p in zip(tensors, params, strict=True)]
