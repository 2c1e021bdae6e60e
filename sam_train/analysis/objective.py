"""The training loss on a fixed set of batches as a function of the weights.

Every measure in this package (sharpness, Hessian spectrum, loss landscape) evaluates one
deterministic function L(w): the mean loss over the same batches, random layers off, norm
layers on batch statistics (as in training) or on their running statistics. The weights are
moved in place and restored exactly; running statistics are never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call

from sam_train.sam.sam import global_dot as dot

Vector = list[torch.Tensor]  # one tensor per parameter: a point or direction in weight space

#: Yields (mean loss of one batch, its share of the total) for the current weights.
BatchLosses = Callable[[], Iterable[tuple[torch.Tensor, float]]]


class Objective:
    """L(w) = sum_b share_b * loss_b(w) over fixed batches, with value, gradient and H v."""

    def __init__(self, params: list[torch.Tensor], batch_losses: BatchLosses) -> None:
        self.params = params
        self.batch_losses = batch_losses

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


class ModelObjective(Objective):
    """A model's mean loss over fixed batches; dropout and other random layers off.

    ``batch_statistics=True``: norm layers normalise with each batch's own statistics, as in
    training, so L is the function SGD and SAM minimised; their running statistics stay as
    they are (each pass updates copies). ``False``: eval mode, the running statistics fixed
    (the deployed function); the loss of an image then does not depend on its batch, and the
    batches are regrouped into chunks of up to ``chunk_size`` images (default: one).
    """

    def __init__(
        self,
        model: nn.Module,
        batches: list[tuple[torch.Tensor, torch.Tensor]],
        criterion: nn.Module,
        *,
        batch_statistics: bool = True,
        chunk_size: int | None = None,
    ) -> None:
        model.eval()
        self.model = model
        self.batch_statistics = batch_statistics
        if batch_statistics:
            for module in model.modules():
                if isinstance(module, nn.modules.batchnorm._NormBase):
                    module.train()
            self.chunks = list(batches)
        else:
            images = torch.cat([x for x, _ in batches])
            targets = torch.cat([y for _, y in batches])
            size = chunk_size or len(targets)
            self.chunks = list(zip(images.split(size), targets.split(size), strict=True))
        total = sum(len(y) for _, y in self.chunks)

        def batch_losses() -> Iterator[tuple[torch.Tensor, float]]:
            for x, y in self.chunks:
                yield criterion(self._forward(x), y), len(y) / total

        super().__init__([p for p in model.parameters() if p.requires_grad], batch_losses)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.batch_statistics:
            return self.model(x)
        # Norm layers in training mode update running statistics: let them update copies.
        buffers = {name: b.clone() for name, b in self.model.named_buffers()}
        return functional_call(self.model, buffers, (x,))

    @torch.no_grad()
    def accuracy(self) -> float:
        """Top-1 accuracy (%) over the batches, computed like the loss."""
        correct = sum((self._forward(x).argmax(1) == y).sum().item() for x, y in self.chunks)
        return 100.0 * correct / sum(len(y) for _, y in self.chunks)


def _zeros_for_none(tensors, params) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if t is None else t for t, p in zip(tensors, params, strict=True)]
