"""SAM passes on part of the batch: the variants whose saving is computing fewer examples.

* K-SAM (Ni et al., 2022, "K-SAM: Sharpness-Aware Minimization at the Speed of SGD"): a
  forward without gradients over the batch ranks its examples by loss at w; both SAM passes
  (the ascent gradient and the gradient at w + eps) run on the k highest-loss examples only.
* ESAM's sharpness-sensitive data selection (Du et al., ICLR 2022; official code
  dydjw9/Efficient_SAM, ``utils/Esam.py``): the first pass is the whole batch, keeping each
  example's loss; after the ascent a forward without gradients gives each example's loss at
  w + eps, and the second forward-backward runs on the examples whose loss rose most. Like the
  official code, the kept examples are those whose rise is strictly above the
  ``round_down(fraction * batch)``-th largest (one fewer than the fraction, ties aside).

The step's reported loss and accuracy are the whole batch's at w in both. Limits, refused by
the config in one line: cross-entropy only (the per-example losses), no accumulation
micro-batches, no Mixup, no fp16, no m-sharpness. Random layers draw once per pass: a pass on
a subset cannot reuse the whole batch's dropout masks (K-SAM's two passes see the same draw).
Under DDP each replica selects from its own batch and the second pass's gradient is averaged.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F


class SAMStep(Protocol):
    """What the selection reads of ``sam_train.step.SAMStep`` (not imported: it imports this)."""

    model: nn.Module
    optimizer: Any
    criterion: nn.Module
    strategy: Any
    precision: Any
    counts: Any
    sync_perturbation: bool
    _stats_guard: Any

    def count_pass(self, examples: int, backward: bool = True) -> None: ...


Losses = tuple[torch.Tensor, torch.Tensor]  # (per-example losses, logits), detached


def example_losses(
    step: SAMStep, images: torch.Tensor, targets: torch.Tensor, *, backward: bool, sync: bool
) -> Losses:
    """One forward over ``images`` with each example's loss; with ``backward``, the gradient
    of their mean (all-reduced only if ``sync``). Counted in ``step.counts``."""
    if not isinstance(step.criterion, nn.CrossEntropyLoss):
        raise TypeError("selecting examples needs nn.CrossEntropyLoss (per-example losses)")
    smoothing = step.criterion.label_smoothing
    with step.strategy.no_sync(step.model, skip_sync=not (sync and backward)):
        with torch.set_grad_enabled(backward), step.precision.autocast():
            logits = step.model(images)
        losses = F.cross_entropy(
            logits.float(), targets, reduction="none", label_smoothing=smoothing
        )
        if backward:
            step.precision.scale(losses.mean()).backward()
    step.count_pass(len(targets), backward=backward)
    return losses.detach(), logits.detach()


def top_examples(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` highest scores (at least one)."""
    return torch.topk(scores, max(1, min(count, len(scores)))).indices


def above_cutoff(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """ESAM's official rule: a mask of the scores strictly above the int(fraction * n)-th
    largest (all of those equal to it when none is above)."""
    position = max(1, int(len(scores) * fraction))
    cutoff = torch.topk(scores, position).values[-1]
    keep = scores > cutoff
    return keep if keep.any() else scores >= cutoff  # all tied: keep them rather than none


def selected_passes(
    step: SAMStep, images: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One SAM step of a selecting variant; the gradient is left in ``.grad``."""
    optimizer, batch = step.optimizer, len(targets)
    sync_first = step.sync_perturbation or optimizer.needs_synced_first_pass()
    rng = torch.get_rng_state()
    optimizer.choose_perturbed(freeze=step.strategy.freezes_parameters)  # ESAM's SWP
    if optimizer.select_before_ascent:  # K-SAM: rank by loss at w, both passes on the top k
        losses, logits = example_losses(step, images, targets, backward=False, sync=False)
        keep = top_examples(losses, int(optimizer.select_fraction * batch))
        images, targets_kept = images[keep], targets[keep]
        torch.set_rng_state(rng)
        example_losses(step, images, targets_kept, backward=True, sync=sync_first)
    else:  # ESAM: the whole batch first
        losses, logits = example_losses(step, images, targets, backward=True, sync=sync_first)
        targets_kept = targets
    if not optimizer.first_step(zero_grad=True):
        raise RuntimeError(f"{type(optimizer).__name__} must perturb every step")
    step.counts.ascent_steps += 1
    if not optimizer.select_before_ascent:  # ESAM: rank by the loss's rise under eps
        torch.set_rng_state(rng)
        with step._stats_guard.frozen():
            after, _ = example_losses(step, images, targets, backward=False, sync=False)
        keep = above_cutoff(after - losses, optimizer.select_fraction)
        images, targets_kept = images[keep], targets[keep]
    torch.set_rng_state(rng)
    with step._stats_guard.frozen():
        example_losses(step, images, targets_kept, backward=True, sync=True)
    optimizer.restore()
    labels = targets.argmax(dim=1) if targets.dim() > 1 else targets
    correct = (logits.argmax(dim=1) == labels).sum()
    return losses.sum(), correct, step.precision.unscaled_norm(optimizer.last_grad_norm)
