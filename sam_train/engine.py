"""The training engine: the SAM two-pass step, an epoch loop and evaluation.

It takes built objects (model, optimizer, loader, ...) and never reads the config. One step:

1. forward + backward at w on every micro-batch (gradient accumulation), updating norm-layer
   running statistics; under DDP inside ``no_sync()`` so each replica perturbs with its own
   gradient (the paper's m-sharpness with m = per-device batch), unless
   ``sync_perturbation`` asks for the all-reduced gradient;
2. ``optimizer.first_step``: w -> w + eps;
3. forward + backward at w + eps with the same micro-batches and the same random draws
   (dropout), with running statistics frozen; gradients all-reduced here only;
4. ``optimizer.restore``: w copied back, then unscale (fp16), clip, base optimizer step.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.optim import Optimizer

from sam_train.distributed import all_reduce_sum
from sam_train.logger import RunLogger
from sam_train.sam import SAM, RunningStatsGuard


@dataclass
class EpochStats:
    """Sums kept on the device during an epoch and read once at its end."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int = 0
    images_per_sec: float = 0.0
    skipped_steps: int = 0

    def as_dict(self) -> dict[str, float]:
        count = max(self.count, 1)
        return {
            "loss": self.loss_sum.item() / count,
            "acc1": 100.0 * self.correct.item() / count,
            "images_per_sec": self.images_per_sec,
        }


class _RngSnapshot:
    """The CPU (and current CUDA) generator state, so both SAM passes draw the same dropout."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state(self.cuda, self.device)


@dataclass
class Engine:
    """Runs training and evaluation steps on built objects.

    ``optimizer`` is a :class:`SAM` (two passes per step) or any torch optimizer (one pass).
    ``scheduler`` follows timm's protocol (``step_update(num_updates)`` after every step).
    """

    model: nn.Module
    optimizer: Optimizer
    criterion: nn.Module
    device: torch.device
    precision: str = "none"  # none | bf16 | fp16
    scaler: torch.amp.GradScaler | None = None
    clip_grad_norm: float | None = None
    accum_steps: int = 1
    sync_perturbation: bool = False
    channels_last: bool = False
    scheduler: object | None = None
    logger: RunLogger | None = None
    log_every: int = 50
    global_step: int = 0
    _stats_guard: RunningStatsGuard = field(init=False)

    def __post_init__(self) -> None:
        if self.precision not in ("none", "bf16", "fp16"):
            raise ValueError(f"precision must be none, bf16 or fp16, got {self.precision!r}")
        if self.precision == "fp16" and self.scaler is None:
            raise ValueError("fp16 needs a GradScaler")
        self._stats_guard = RunningStatsGuard(self.model)

    # ------------------------------------------------------------------ helpers
    @property
    def uses_sam(self) -> bool:
        return isinstance(self.optimizer, SAM)

    @property
    def base_optimizer(self) -> Optimizer:
        return self.optimizer.base_optimizer if self.uses_sam else self.optimizer

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _no_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        if sync or not hasattr(self.model, "no_sync"):
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor):
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def _forward_backward(
        self, chunks: list[tuple[torch.Tensor, torch.Tensor]], *, sync: bool, track: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate the gradient of the mean loss over all micro-batches.

        Gradients are all-reduced (DDP) on the last micro-batch only, and only if ``sync``.
        Returns the summed loss and the number of correct top-1 predictions, detached (left
        at zero unless ``track``: SAM's second pass does not need them).
        """
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        total = sum(len(t) for _, t in chunks)
        for index, (images, targets) in enumerate(chunks):
            last = index == len(chunks) - 1
            with self._no_sync(sync and last):
                with self._autocast():
                    logits = self.model(images)
                    loss = self.criterion(logits, targets)
                weighted = loss if len(chunks) == 1 else loss * (len(targets) / total)
                if self.scaler is not None:
                    weighted = self.scaler.scale(weighted)
                weighted.backward()
            if track:
                loss_sum.add_(loss.detach().float(), alpha=len(targets))
                correct += (logits.detach().argmax(dim=1) == targets).sum()
        return loss_sum, correct

    # ------------------------------------------------------------------ one step
    def train_step(
        self, images: torch.Tensor, targets: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on a batch; returns (summed loss, correct count) at w."""
        images, targets = self._to_device(images, targets)
        chunks = list(
            zip(
                images.tensor_split(self.accum_steps),
                targets.tensor_split(self.accum_steps),
                strict=True,
            )
        )
        if not self.uses_sam:
            loss_sum, correct = self._forward_backward(chunks, sync=True)
            self._apply_gradients()
            return loss_sum, correct

        rng = _RngSnapshot(self.device)
        loss_sum, correct = self._forward_backward(chunks, sync=self.sync_perturbation)
        perturbed = self.optimizer.first_step(zero_grad=True)
        if perturbed is not False:
            rng.restore()
            with self._stats_guard.frozen():
                self._forward_backward(chunks, sync=True, track=False)
        self.optimizer.restore()
        if self.scaler is not None:
            self._propagate_first_pass_overflow()
        self._apply_gradients()
        return loss_sum, correct

    def _propagate_first_pass_overflow(self) -> None:
        """A non-finite first gradient (fp16 overflow) must skip the step like a second one.

        The scaler only inspects the gradients it unscales (the second pass's), so a NaN is
        planted in one of them when the first norm was not finite: no host sync needed, and
        under DDP the all-reduce carries it to every rank, so all of them skip.
        """
        norm = self.optimizer.last_grad_norm
        if norm is None:
            return
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    poison = torch.where(torch.isfinite(norm), 0.0, float("nan"))
                    p.grad.view(-1)[:1].add_(poison.to(p.grad.dtype))
                    return

    @property
    def param_groups(self) -> list[dict]:
        return self.base_optimizer.param_groups

    def _apply_gradients(self) -> None:
        """Unscale (fp16), clip, base-optimizer step, scheduler update, zero the gradients."""
        base = self.base_optimizer
        if self.scaler is not None:
            self.scaler.unscale_(base)
        if self.clip_grad_norm is not None:
            params = [p for g in base.param_groups for p in g["params"] if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm, foreach=True)
        if self.scaler is not None:
            self.scaler.step(base)
            self.scaler.update()
        else:
            base.step()
        base.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.global_step)

    # ------------------------------------------------------------------ loops
    def train_one_epoch(
        self,
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        epoch: int,
        epochs: int,
        steps_per_epoch: int,
        on_step: Callable[[Engine], None] | None = None,
    ) -> EpochStats:
        """Train for one pass over ``loader``; log every ``log_every`` steps."""
        self.model.train()
        stats = EpochStats(
            loss_sum=torch.zeros((), device=self.device),
            correct=torch.zeros((), device=self.device, dtype=torch.long),
        )
        window_loss = torch.zeros((), device=self.device)
        window_count, window_steps, window_start = 0, 0, time.perf_counter()
        epoch_start = window_start
        for step, (images, targets) in enumerate(loader, start=1):
            loss_sum, correct = self.train_step(images, targets)
            stats.loss_sum += loss_sum
            stats.correct += correct
            stats.count += len(targets)
            window_loss += loss_sum
            window_count += len(targets)
            window_steps += 1
            if step % self.log_every == 0 or step == steps_per_epoch:
                elapsed = time.perf_counter() - window_start
                throughput = window_count / max(elapsed, 1e-9)
                seconds_per_step = elapsed / window_steps
                remaining = (epochs - epoch - 1) * steps_per_epoch + steps_per_epoch - step
                metrics = {
                    "train/loss": window_loss.item() / window_count,
                    "lr": self.param_groups[0]["lr"],
                    "throughput/images_per_sec": throughput,
                }
                if self.uses_sam and self.optimizer.last_grad_norm is not None:
                    norm = self.optimizer.last_grad_norm.item()
                    if self.scaler is not None:
                        norm /= self.scaler.get_scale()
                    metrics["sam/grad_norm"] = norm
                if self.logger is not None:
                    self.logger.scalars(metrics, self.global_step)
                    self.logger.progress(
                        epoch=epoch,
                        epochs=epochs,
                        step=step,
                        steps=steps_per_epoch,
                        eta_seconds=remaining * seconds_per_step,
                        metrics={
                            "loss": metrics["train/loss"],
                            "lr": metrics["lr"],
                            "img/s": throughput,
                        },
                    )
                window_loss.zero_()
                window_count, window_steps, window_start = 0, 0, time.perf_counter()
            if on_step is not None:
                on_step(self)
        stats.images_per_sec = stats.count / max(time.perf_counter() - epoch_start, 1e-9)
        return stats

    @torch.no_grad()
    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy over the whole loader, summed over all ranks."""
        self.model.eval()
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top1, top5, n
        for images, targets in loader:
            images, targets = self._to_device(images, targets)
            with self._autocast():
                logits = self.model(images)
            loss = nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
            top = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hits = top == targets[:, None]
            totals += torch.stack(
                [
                    loss.double(),
                    hits[:, :1].sum().double(),
                    hits.sum().double(),
                    torch.tensor(len(targets), device=self.device, dtype=torch.float64),
                ]
            )
        all_reduce_sum(totals)
        loss, top1, top5, count = totals.tolist()
        count = max(count, 1.0)
        return {
            "loss": loss / count,
            "acc1": 100.0 * top1 / count,
            "acc5": 100.0 * top5 / count,
            "count": int(count),
        }
