"""The SAM two-pass step, usable on its own from any training loop.

One step on a per-device batch, split into ``accum_steps`` micro-batches:

1. forward + backward at w on every micro-batch, updating norm-layer running statistics;
   under DDP inside ``no_sync()``, so each replica perturbs with its own gradient (the
   paper's m-sharpness with m = per-device batch) and the step costs one all-reduce, unless
   ``sync_perturbation`` asks for the all-reduced gradient;
2. ``optimizer.first_step``: w -> w + eps, from the (loss-scaled, under fp16) gradient.
   Multi-step ascent runs its extra passes like step 3 through a closure; variants that skip
   the ascent on some steps return False and step 3 is skipped (the first gradient is then
   averaged over replicas, and variants that combine both gradients sync the first pass);
3. forward + backward at w + eps with the same micro-batches and the same random draws
   (dropout), running statistics frozen; DDP all-reduces these gradients;
4. ``optimizer.restore``: w copied back; then unscale (fp16), clip, base optimizer step.

With ``sam_chunk=m`` the per-device batch is cut into chunks of m examples that each run
passes 1-4 with their own eps; the second-pass gradients are averaged (m-sharpness below
the per-device batch). A step whose gradient is not finite changes nothing: not the weights,
not the optimizer state, not the running statistics; that is decided on the device
(:mod:`sam_train.step.nonfinite`), so a step reads nothing back to the host.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim import Optimizer

from sam_train.sam import SAM, RunningStatsGuard
from sam_train.sam.sharded import drop_grads
from sam_train.step.counts import PassCounts, grad_share
from sam_train.step.nonfinite import GradientCheck, MaskedUpdate, NonFiniteGuard
from sam_train.step.params import ParamList
from sam_train.step.precision import Precision
from sam_train.step.selection import selected_passes
from sam_train.strategy.base import SingleProcess, Strategy

Batch = tuple[torch.Tensor, torch.Tensor]
#: Mixes a whole per-device batch: (images, labels) -> (mixed images, soft targets).
BatchMix = Callable[[torch.Tensor, torch.Tensor], Batch]


@dataclass
class StepOutput:
    """What one step measured at w (kept on the device: reading them costs a host sync)."""

    loss_sum: torch.Tensor  # summed over the batch's examples
    correct: torch.Tensor  # top-1 hits
    count: int
    found_inf: torch.Tensor | None = None  # a 0-d bool tensor when checked; True: skipped
    grad_norm: torch.Tensor | None = None  # SAM's first-pass gradient norm, unscaled

    @property
    def finite(self) -> bool | torch.Tensor:
        """Whether the step was taken: True, or a 0-d bool tensor on the device (reading it
        syncs; computed when asked, as the trainer reads the skipped-step counts instead)."""
        return True if self.found_inf is None else ~self.found_inf


def _pieces(images: torch.Tensor, targets: torch.Tensor, pieces: int) -> list[Batch]:
    """The batch cut into ``pieces`` parts (never an empty one); itself, uncut, for one part
    (the usual case: no accumulation, no m-sharpness), without a slicing op per tensor."""
    if pieces <= 1:
        return [(images, targets)]
    pieces = min(pieces, targets.shape[0])
    return list(zip(images.tensor_split(pieces), targets.tensor_split(pieces), strict=True))


def _add(total: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """``total + value`` in place, or ``value`` itself for the first term (no zeros to fill:
    the terms are fresh tensors of the step)."""
    return value if total is None else total.add_(value)


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


class SAMStep:
    """``step(images, targets)`` takes one optimizer step and returns a :class:`StepOutput`.

    ``optimizer`` is a :class:`SAM` (two passes) or any torch optimizer (one pass).
    ``model`` is the module to run forward (wrapped by ``strategy`` when distributed). The
    learning-rate schedule is the caller's: the step never reads or advances it.
    ``mix`` (timm's ``Mixup``) mixes the per-device batch once, before any pass: both SAM
    passes, every accumulation micro-batch and every m-sharpness chunk slice that one mixed
    batch, and ``criterion`` must take its soft targets. Top-1 hits of soft targets count
    against their argmax (the label with the larger share).
    ``precision`` is built once by the caller (``build.build_precision``); a name and
    ``scaler`` build one here. ``check_every``: read the skipped-step counts (one host sync)
    every so many steps and stop after ``max_bad_steps`` in a row; ``None`` leaves that to
    the caller (the trainer checks at its logging interval).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Optimizer,
        criterion: nn.Module,
        device: torch.device,
        *,
        strategy: Strategy | None = None,
        precision: Precision | str = "none",
        scaler: torch.amp.GradScaler | None = None,
        clip_grad_norm: float | None = None,
        accum_steps: int = 1,
        sync_perturbation: bool = False,
        sam_chunk: int | None = None,
        channels_last: bool = False,
        skip_nonfinite: bool = True,
        max_bad_steps: int = 10,
        check_every: int | None = 1,
        mix: BatchMix | None = None,
    ) -> None:
        if sam_chunk is not None and sync_perturbation:
            raise ValueError("sam_chunk (one eps per chunk) excludes sync_perturbation")
        self.model = model
        self.optimizer = optimizer
        self.criterion = criterion
        self.device = device
        self.strategy = strategy or SingleProcess(device=device)
        if isinstance(precision, str):
            precision = Precision(precision, device, scaler)
        if precision.name == "fp16" and precision.scaler is None:
            raise ValueError("fp16 training needs a GradScaler")
        self.precision = precision
        self.clip_grad_norm = clip_grad_norm
        self.accum_steps = accum_steps
        self.sync_perturbation = sync_perturbation
        self.sam_chunk = sam_chunk
        self.channels_last = channels_last
        self.skip_nonfinite = skip_nonfinite
        self.mix = mix
        self.nonfinite = NonFiniteGuard(max_bad_steps)
        self.check_every = check_every
        self.steps_taken = 0
        self._update = MaskedUpdate(self.base_optimizer)
        self._check = GradientCheck()
        self.counts = PassCounts()  # what the steps computed (results.json)
        self._params = ParamList()  # the base optimizer's parameters, as a list
        self._stats_guard = RunningStatsGuard(model)  # the second pass's frozen statistics
        self._step_stats = RunningStatsGuard(model)  # put back when a step is skipped

    # ------------------------------------------------------------------ properties
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
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.precision.scaler

    # ------------------------------------------------------------------ one step
    def __call__(
        self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None
    ) -> StepOutput:
        """One optimizer step on a per-device batch; ``indices`` (the examples' places in the
        training set) only for the variants that keep per-example outputs (SAF)."""
        images, targets = self._to_device(images, targets)
        if self.mix is not None:
            images, targets = self.mix(images, targets)
        batch = targets.shape[0]
        if self.scaler is not None or self.skip_nonfinite:
            self._step_stats.save()
        if self.uses_sam and self.optimizer.selects_examples:  # K-SAM, ESAM's selection
            loss_sum, correct, grad_norm = selected_passes(self, images, targets)
        elif self.uses_sam and not self.optimizer.single_pass:
            self.optimizer.before_first_pass()  # bSAM's noisy sample
            loss_sum, correct, grad_norm = self._sam_passes(images, targets)
        else:  # one pass: the base optimizer, or a variant that perturbs before it (MSAM)
            if self.uses_sam:
                self.counts.ascent_steps += self.optimizer.perturb_before_pass(images, indices)
                self.counts.add_pass(self.optimizer.reference_forwards(), backward=False)
            micro = _pieces(images, targets, self.accum_steps)
            loss_sum, correct = self._forward_backward(micro, sync=True, denominator=batch)
            if self.uses_sam:
                self.optimizer.restore()
            grad_norm = None
        found_inf = self._apply_gradients()
        self.steps_taken += 1
        self.counts.steps += 1
        self.counts.examples += batch
        if found_inf is not None:
            self._step_stats.restore_where(found_inf)
            self.nonfinite.record(found_inf, self.steps_taken)
            if self.check_every and self.steps_taken % self.check_every == 0:
                self.nonfinite.check()
        return StepOutput(loss_sum, correct, batch, found_inf, grad_norm)

    def _sam_passes(self, images: torch.Tensor, targets: torch.Tensor):
        """Steps 1-4 of the module docstring for every chunk; the gradient is left in ``.grad``."""
        batch = targets.shape[0]
        chunk = self.sam_chunk or batch
        if batch % chunk:
            raise ValueError(f"sam_chunk={chunk} does not divide the per-device batch {batch}")
        micro_size = -(-batch // self.accum_steps)  # the memory budget of one forward
        chunks = _pieces(images, targets, batch // chunk)
        params = self._params(self.param_groups)
        sync_first = self.sync_perturbation or self.optimizer.needs_synced_first_pass()
        self.optimizer.choose_perturbed(freeze=self.strategy.freezes_parameters)  # ESAM's SWP
        loss_sum = correct = None
        carried: list[torch.Tensor | None] | None = None
        for index, (chunk_images, chunk_targets) in enumerate(chunks):
            last_chunk = index == len(chunks) - 1
            micro = _pieces(chunk_images, chunk_targets, -(-chunk // micro_size))
            rng = _RngSnapshot(self.device)
            chunk_loss, chunk_correct = self._forward_backward(
                micro, sync=sync_first, denominator=chunk
            )
            loss_sum, correct = _add(loss_sum, chunk_loss), _add(correct, chunk_correct)

            def ascent_pass(micro: list[Batch] = micro, rng: _RngSnapshot = rng) -> None:
                """An extra pass of multi-step ascent, run like the second pass."""
                rng.restore()
                with self._stats_guard.frozen():
                    self._forward_backward(micro, sync=sync_first, denominator=chunk, track=False)

            perturbed = self.optimizer.first_step(zero_grad=True, ascent_closure=ascent_pass)
            self.counts.ascent_steps += bool(perturbed) and index == 0
            if perturbed is False:  # a variant that skips the ascent keeps the first gradient
                if len(chunks) > 1:
                    raise RuntimeError("m-sharpness needs an optimizer that perturbs every step")
                if not sync_first:
                    self.strategy.average_gradients(params)
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
                    factor=self.precision.overflow_factor(self.optimizer.last_grad_norm),
                    track=False,
                )
            self.optimizer.restore()
            if not last_chunk:
                carried = [p.grad for p in params]
                drop_grads(params)
        return loss_sum, correct, self.precision.unscaled_norm(self.optimizer.last_grad_norm)

    # ------------------------------------------------------------------ passes
    def count_pass(self, examples: int, backward: bool = True) -> None:
        """Count a pass just run in ``counts``, with the share of weight gradients its backward
        computed (ESAM's frozen tensors are left out; gradients dropped later are not)."""
        share = grad_share(self._params(self.param_groups)) if backward else 0.0
        self.counts.add_pass(examples, backward=backward, grad_share=share)

    def _to_device(self, images: torch.Tensor, targets: torch.Tensor) -> Batch:
        images = images.to(self.device, non_blocking=True)
        if self.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, targets.to(self.device, non_blocking=True)

    def _forward_backward(
        self,
        micro_batches: list[Batch],
        *,
        sync: bool,
        denominator: int,
        factor: torch.Tensor | None = None,
        track: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Accumulate the gradient of (summed loss / ``denominator``) over the micro-batches.

        Gradients are averaged over processes on the last micro-batch only, and only if
        ``sync``. ``factor`` multiplies the loss (a NaN there makes every gradient NaN).
        Returns the summed loss and the number of correct top-1 predictions, detached (None
        unless ``track``: SAM's second pass does not need them).
        """
        loss_sum = correct = None
        for index, (images, targets) in enumerate(micro_batches):
            last = index == len(micro_batches) - 1
            size = targets.shape[0]
            with self.strategy.no_sync(self.model, skip_sync=not (sync and last)):
                with self.precision.autocast():
                    logits = self.model(images)
                    loss = self.criterion(logits, targets)
                weighted = loss if size == denominator else loss * (size / denominator)
                if factor is not None:
                    weighted = weighted * factor
                self.precision.scale(weighted).backward()
            self.count_pass(size)
            if track:
                with torch.no_grad():  # no graph, and no detach op per value
                    summed = loss.float() * size
                    labels = targets.argmax(dim=1) if targets.dim() > 1 else targets
                    hits = (logits.argmax(dim=1) == labels).sum()
                loss_sum, correct = _add(loss_sum, summed), _add(correct, hits)
        return loss_sum, correct

    def _apply_gradients(self) -> torch.Tensor | None:
        """Unscale (fp16), clip, base-optimizer step, zero the gradients.

        Returns ``found_inf`` (a 0-d bool tensor on the device) when non-finite steps are
        skipped (``skip_nonfinite``, and always under fp16): the base optimizer's update is
        masked by it on the device (:class:`MaskedUpdate`), nothing is read back here.
        """
        base, scaler = self.base_optimizer, self.scaler
        params = [p for p in self._params(base.param_groups) if p.grad is not None]
        if scaler is not None:
            scaler.unscale_(base)
        norm = None
        if self.clip_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm, foreach=True)
        found_inf = None
        if scaler is None and not self.skip_nonfinite:
            base.step()
        elif params:
            found_inf, as_float = self._check([p.grad for p in params], norm)
            self._update.step(found_inf, as_float)
        if scaler is not None:
            scaler.update()  # halves the scale after an overflow that unscale_ recorded
        drop_grads(params)
        return found_inf
