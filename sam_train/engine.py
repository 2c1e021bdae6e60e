"""The training engine: the SAM two-pass step, an epoch loop and evaluation.

It takes built objects (model, optimizer, loader, ...) and never reads the config. One step
on a per-device batch, split into ``accum_steps`` micro-batches (gradient accumulation):

1. forward + backward at w on every micro-batch, updating norm-layer running statistics;
   under DDP inside ``no_sync()``, so each replica perturbs with its own gradient (the
   paper's m-sharpness with m = per-device batch) and the step costs one all-reduce, unless
   ``sync_perturbation`` asks for the all-reduced gradient;
2. ``optimizer.first_step``: w -> w + eps, from the (loss-scaled, under fp16) gradient:
   eps = rho g / ||g|| does not depend on the scale, so the first pass is never unscaled.
   Multi-step ascent runs its extra passes like step 3 through a closure; variants that skip
   the ascent on some steps return False and step 3 is skipped (the first gradient is then
   averaged over replicas, and variants that combine both gradients sync the first pass);
3. forward + backward at w + eps with the same micro-batches and the same random draws
   (dropout), running statistics frozen; DDP all-reduces these gradients;
4. ``optimizer.restore``: w copied back; then unscale (fp16), clip, base optimizer step.

With ``sam_chunk=m`` the per-device batch is cut into chunks of m examples that each run
steps 1-4's passes with their own eps; the second-pass gradients are averaged (m-sharpness
below the per-device batch).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim import Optimizer

from sam_train.distributed import all_reduce_sum, average_buffers, average_gradients
from sam_train.errors import NonFiniteError
from sam_train.logger import RunLogger
from sam_train.sam import SAM, RunningStatsGuard

Batch = tuple[torch.Tensor, torch.Tensor]


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
    sam_chunk: int | None = None  # m of m-sharpness; None: the whole per-device batch
    channels_last: bool = False
    scheduler: object | None = None
    logger: RunLogger | None = None
    log_every: int = 50
    global_step: int = 0
    skip_nonfinite: bool = True
    max_bad_steps: int = 10
    skipped_steps: int = 0
    _bad_streak: int = 0
    _stats_guard: RunningStatsGuard = field(init=False)
    _first_grad_norm: torch.Tensor | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.precision not in ("none", "bf16", "fp16"):
            raise ValueError(f"precision must be none, bf16 or fp16, got {self.precision!r}")
        if self.precision == "fp16" and self.scaler is None:
            raise ValueError("fp16 needs a GradScaler")
        if self.sam_chunk is not None and self.sync_perturbation:
            raise ValueError("sam_chunk (one eps per chunk) excludes sync_perturbation")
        self._stats_guard = RunningStatsGuard(self.model)

    # ------------------------------------------------------------------ helpers
    @property
    def uses_sam(self) -> bool:
        return isinstance(self.optimizer, SAM)

    @property
    def base_optimizer(self) -> Optimizer:
        return self.optimizer.base_optimizer if self.uses_sam else self.optimizer

    @property
    def param_groups(self) -> list[dict]:
        return self.base_optimizer.param_groups

    @property
    def distributed(self) -> bool:
        return isinstance(self.model, DistributedDataParallel)

    @property
    def eval_model(self) -> nn.Module:
        """The model without its DDP wrapper: evaluation shards need no collective."""
        return self.model.module if self.distributed else self.model

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _no_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        if sync or not self.distributed:
            return contextlib.nullcontext()
        return self.model.no_sync()

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def _micro_batches(
        self, images: torch.Tensor, targets: torch.Tensor, pieces: int
    ) -> list[Batch]:
        pieces = min(pieces, len(targets))  # never an empty micro-batch
        return list(zip(images.tensor_split(pieces), targets.tensor_split(pieces), strict=True))

    def _forward_backward(
        self,
        micro_batches: list[Batch],
        *,
        sync: bool,
        denominator: int,
        factor: torch.Tensor | None = None,
        track: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Accumulate the gradient of (summed loss / ``denominator``) over the micro-batches.

        DDP all-reduces on the last micro-batch only, and only if ``sync``. ``factor``
        multiplies the loss (a NaN there makes every gradient NaN). Returns the summed loss
        and the number of correct top-1 predictions, detached (left at zero unless ``track``:
        SAM's second pass does not need them).
        """
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        for index, (images, targets) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            with self._no_sync(sync and last):
                with self._autocast():
                    logits = self.model(images)
                    loss = self.criterion(logits, targets)
                weighted = (
                    loss if len(targets) == denominator else loss * (len(targets) / denominator)
                )
                if factor is not None:
                    weighted = weighted * factor
                if self.scaler is not None:
                    weighted = self.scaler.scale(weighted)
                weighted.backward()
            if track:
                loss_sum.add_(loss.detach().float(), alpha=len(targets))
                correct += (logits.detach().argmax(dim=1) == targets).sum()
        return loss_sum, correct

    # ------------------------------------------------------------------ one step
    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        """One optimizer step on a per-device batch; returns (summed loss, correct count) at w."""
        images, targets = self._to_device(images, targets)
        batch = len(targets)
        if not self.uses_sam:
            micro = self._micro_batches(images, targets, self.accum_steps)
            loss_sum, correct = self._forward_backward(micro, sync=True, denominator=batch)
            self._apply_gradients()
            return loss_sum, correct

        chunk = self.sam_chunk or batch
        if batch % chunk:
            raise ValueError(f"sam_chunk={chunk} does not divide the per-device batch {batch}")
        micro_size = -(-batch // self.accum_steps)  # the memory budget of one forward
        chunks = list(zip(images.split(chunk), targets.split(chunk), strict=True))
        params = [p for group in self.param_groups for p in group["params"]]
        sync_first = self.sync_perturbation or self.optimizer.needs_synced_first_pass()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        carried: list[torch.Tensor | None] | None = None
        for index, (chunk_images, chunk_targets) in enumerate(chunks):
            last_chunk = index == len(chunks) - 1
            micro = self._micro_batches(chunk_images, chunk_targets, -(-chunk // micro_size))
            rng = _RngSnapshot(self.device)
            chunk_loss, chunk_correct = self._forward_backward(
                micro, sync=sync_first, denominator=chunk
            )
            loss_sum += chunk_loss
            correct += chunk_correct

            def ascent_pass(micro: list[Batch] = micro, rng: _RngSnapshot = rng) -> None:
                """An extra pass of multi-step ascent, run like the second pass."""
                rng.restore()
                with self._stats_guard.frozen():
                    self._forward_backward(micro, sync=sync_first, denominator=chunk)

            perturbed = self.optimizer.first_step(zero_grad=True, ascent_closure=ascent_pass)
            if perturbed is False:  # a variant that skips the ascent keeps the first gradient
                if len(chunks) > 1:
                    raise RuntimeError("m-sharpness needs an optimizer that perturbs every step")
                if self.distributed and not sync_first:
                    average_gradients(params)
                self.optimizer.restore()  # variants may still combine gradients here
                break
            if carried is not None:  # earlier chunks' second-pass gradients
                for p, grad in zip(params, carried, strict=True):
                    p.grad = grad
            rng.restore()
            with self._stats_guard.frozen():
                self._forward_backward(
                    micro,
                    sync=last_chunk,
                    denominator=batch,
                    factor=self._overflow_factor(),
                    track=False,
                )
            self.optimizer.restore()
            if not last_chunk:
                carried = [p.grad for p in params]
                for p in params:
                    p.grad = None
        self._record_grad_norm()
        self._apply_gradients()
        return loss_sum, correct

    def _overflow_factor(self) -> torch.Tensor | None:
        """fp16: 1, or NaN when the first gradient's norm overflowed, for the second loss.

        The scaler inspects only the gradients it unscales (the second pass's). A NaN factor
        on the second loss makes them NaN before DDP all-reduces them, so every rank sees the
        overflow of any one and skips the step, without a host sync or an extra collective.
        """
        if self.scaler is None or self.optimizer.last_grad_norm is None:
            return None
        finite = torch.isfinite(self.optimizer.last_grad_norm)
        return torch.where(finite, 1.0, float("nan")).to(self.device)

    def _record_grad_norm(self) -> None:
        """The first gradient's norm for logging, without the fp16 loss scale."""
        norm = self.optimizer.last_grad_norm
        if norm is not None and self.scaler is not None:
            norm = norm / self.scaler._get_scale_async()
        self._first_grad_norm = norm

    def _apply_gradients(self) -> None:
        """Unscale (fp16), clip, base-optimizer step, scheduler update, zero the gradients.

        A non-finite gradient never reaches the weights: with fp16 the GradScaler skips the
        step; otherwise (``skip_nonfinite``) the step is skipped here, at the cost of one host
        sync per step. Either way the skip is counted, and ``max_bad_steps`` in a row stop the
        run with NonFiniteError.
        """
        base = self.base_optimizer
        params = [p for g in base.param_groups for p in g["params"] if p.grad is not None]
        if self.scaler is not None:
            self.scaler.unscale_(base)
        norm = None
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm, foreach=True)
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(base)
            self.scaler.update()
            self._count_step(finite=self.scaler.get_scale() >= scale)
        elif not self.skip_nonfinite:
            base.step()
        else:
            if norm is None and params:
                grads = [p.grad for p in params]
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
            finite = norm is None or bool(torch.isfinite(norm))
            if finite:
                base.step()
            self._count_step(finite)
        base.zero_grad(set_to_none=True)
        self.global_step += 1
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=self.global_step)

    def _count_step(self, finite: bool) -> None:
        if finite:
            self._bad_streak = 0
            return
        self.skipped_steps += 1
        self._bad_streak += 1
        if self.logger is not None:
            self.logger.scalars({"train/skipped_steps": self.skipped_steps}, self.global_step)
        if self._bad_streak >= self.max_bad_steps:
            raise NonFiniteError(
                f"{self._bad_streak} consecutive steps had a non-finite loss or gradient "
                f"(up to step {self.global_step + 1}); lower the learning rate or rho, or "
                "raise trainer.max_bad_steps"
            )

    # ------------------------------------------------------------------ loops
    def train_one_epoch(
        self,
        loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
        *,
        epoch: int,
        epochs: int,
        steps_per_epoch: int,
        start_step: int = 0,
        on_step: Callable[[int], None] | None = None,
    ) -> EpochStats:
        """Train for one pass over ``loader``; log every ``log_every`` steps.

        ``start_step`` is the number of this epoch's steps a resumed run already took (the
        loader leaves them out). ``on_step(step)`` runs after every step (checkpoints,
        preemption).

        Logged windows show this rank's examples; the returned epoch totals are summed over
        ranks (one all-reduce per epoch).
        """
        self.model.train()
        stats = EpochStats(
            loss_sum=torch.zeros((), device=self.device),
            correct=torch.zeros((), device=self.device, dtype=torch.long),
        )
        window_loss = torch.zeros((), device=self.device)
        window_count, window_steps, window_start = 0, 0, time.perf_counter()
        epoch_start = window_start
        for step, (images, targets) in enumerate(loader, start=start_step + 1):
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
                if self._first_grad_norm is not None:
                    metrics["sam/grad_norm"] = self._first_grad_norm.item()
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
                on_step(step)
        if self.distributed:
            totals = torch.stack([stats.loss_sum.double(), stats.correct.double()])
            totals = torch.cat([totals, totals.new_tensor([stats.count])])
            all_reduce_sum(totals)
            stats.loss_sum, stats.correct = totals[0], totals[1]
            stats.count = int(totals[2].item())
        stats.images_per_sec = stats.count / max(time.perf_counter() - epoch_start, 1e-9)
        return stats

    @torch.no_grad()
    def evaluate(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
        """Loss, top-1 and top-5 accuracy over the whole loader, summed over all ranks.

        Under DDP the replicas' running statistics are averaged first, so every shard of the
        test set is scored by the same model, and the sharded loader holds each example once.
        """
        model = self.eval_model
        if self.distributed:
            average_buffers(model)
        model.eval()
        totals = torch.zeros(4, device=self.device, dtype=torch.float64)  # loss, top1, top5, n
        for images, targets in loader:
            images, targets = self._to_device(images, targets)
            with self._autocast():
                logits = model(images)
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
        if self.distributed:
            all_reduce_sum(totals)
        loss, top1, top5, count = totals.tolist()
        count = max(count, 1.0)
        return {
            "loss": loss / count,
            "acc1": 100.0 * top1 / count,
            "acc5": 100.0 * top5 / count,
            "count": int(count),
        }
