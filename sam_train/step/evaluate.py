"""Loss, top-1 and top-5 over a (sharded) test loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from sam_train.step.precision import Precision
from sam_train.strategy.base import SingleProcess, Strategy


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    strategy: Strategy | None = None,
    precision: Precision | None = None,
    channels_last: bool = False,
    confusion: torch.Tensor | None = None,
) -> dict[str, float]:
    """Scores summed over every process (each holds a shard without padding, so every test
    image counts once). Replicas' running statistics are averaged first, so every shard is
    scored by the same model; the plain module runs, since evaluation needs no collective
    (under FSDP it all-gathers parameters, and every rank runs as many forwards).

    ``confusion``, a zeroed (classes x classes) int64 tensor on ``device``, receives the counts
    of (true class, predicted class) over every process, in the same pass (sam-eval --per-class)."""
    strategy = strategy or SingleProcess(device=device)
    precision = precision or Precision(device=device)
    strategy.average_buffers(model)
    model = strategy.unwrap(model)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, device=device, dtype=torch.float64)  # loss, top1, top5, n
    for images, targets, scored in strategy.eval_batches(loader):
        images, targets = images.to(device, non_blocking=True), targets.to(device)
        if channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            logits = model(images)
        if not scored:  # FSDP: a forward that keeps the ranks in step, not a test image
            continue
        loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == targets[:, None]
        totals[0] += loss.double()
        totals[1] += hits[:, :1].sum().double()
        totals[2] += hits.sum().double()
        totals[3] += len(targets)
        if confusion is not None:
            flat = targets * confusion.shape[1] + top[:, 0]  # the top-1 that acc1 counts
            confusion += torch.bincount(flat, minlength=confusion.numel()).view_as(confusion)
    strategy.all_reduce_sum(totals)
    if confusion is not None:
        strategy.all_reduce_sum(confusion)
    model.train(was_training)
    loss, top1, top5, count = totals.tolist()
    count = max(count, 1.0)
    return {
        "loss": loss / count,
        "acc1": 100.0 * top1 / count,
        "acc5": 100.0 * top5 / count,
        "count": int(count),
    }
