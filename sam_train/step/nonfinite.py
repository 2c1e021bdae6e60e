"""A non-finite step skipped on the device, and the guard that stops a diverged run.

Reading "is this gradient finite?" back to the host every step (``bool(tensor)``) stalls the
CPU until the GPU's queue drains, so the next step's kernels cannot be queued behind this
one's. Instead the decision stays on the device, as ``torch.amp.GradScaler`` and torch's fused
optimizers keep it: a ``found_inf`` flag masks the base optimizer's update (weights and
optimizer state unchanged where it is set), and the guard counts skipped steps on the device
and reads them back only when asked (the trainer asks at its logging interval).
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from sam_train.errors import NonFiniteError
from sam_train.sam.sam import global_norm
from sam_train.sam.sharded import is_sharded, local, replicated_value


def non_finite(value: torch.Tensor) -> torch.Tensor:
    """``~torch.isfinite(value)`` in two kernels instead of five: ``0 * value`` is NaN
    exactly where ``value`` is infinite or NaN."""
    return value.mul(0).isnan()


class GradientCheck:
    """``found_inf`` of the gradients a step applies, decided on the device.

    Plain gradients: GradScaler's own check, ``torch._amp_foreach_non_finite_check_and_unscale_``
    with a scale of one (one multi-tensor kernel per dtype; the gradients are multiplied by 1,
    unchanged), into a float flag that fused optimizers take as it is. With a norm already
    computed (clipping), or FSDP's gradient shards (a flag must hold on every rank: the global
    norm's all-reduce gives it), ``non_finite(norm)``.
    """

    def __init__(self) -> None:
        self._flag: torch.Tensor | None = None  # float32, reused every step
        self._one: torch.Tensor | None = None

    @torch.no_grad()
    def __call__(
        self, grads: list[torch.Tensor], norm: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(``found_inf`` as a 0-d bool tensor, the same as float32 when it was made so)."""
        if norm is not None or is_sharded(grads[0]):
            norm = global_norm(grads) if norm is None else norm
            return non_finite(replicated_value(norm)), None
        device = grads[0].device
        if self._flag is None or self._flag.device != device:
            self._flag = torch.zeros((), device=device)
            self._one = torch.ones((), device=device)
        else:
            self._flag.zero_()
        dtypes = {grad.dtype for grad in grads}  # one list per dtype, as GradScaler passes them
        for dtype in dtypes:
            same = grads if len(dtypes) == 1 else [g for g in grads if g.dtype == dtype]
            torch._amp_foreach_non_finite_check_and_unscale_(same, self._flag, self._one)
        return self._flag.bool(), self._flag


def supports_found_inf(optimizer: Optimizer) -> bool:
    """torch's fused optimizers skip their own update where ``optimizer.found_inf`` is set
    (the attribute GradScaler hands them); the flag then costs nothing. Asked at every step:
    a loaded state dict may turn ``fused`` off in the groups. (Not on FSDP's DTensor shards,
    which :class:`MaskedUpdate` checks once: they take the masked copy.)"""
    if not getattr(optimizer, "_step_supports_amp_scaling", False):
        return False
    if not all(group.get("fused") for group in optimizer.param_groups):
        return False
    # a post-step hook (WSAM's decoupled step) would run on a skipped step
    return not getattr(optimizer, "_optimizer_step_post_hooks", None)


class MaskedUpdate:
    """``optimizer.step()`` whose effect is undone, on the device, where ``found_inf`` is set.

    Fused optimizers take the flag themselves. Any other optimizer's parameters and state
    tensors are copied into buffers allocated once (their size: the parameters plus the
    optimizer state, which the benchmark reports) and put back with ``torch.where`` after the
    step; state on another device than the flag (Adam's non-capturable CPU step count) is not
    masked. The first steps, until one is finite and while the optimizer has no state, read
    the flag on the host once each, so that a skipped first step creates no state.
    """

    def __init__(self, optimizer: Optimizer) -> None:
        self.optimizer = optimizer
        # FSDP's shards (the optimizer is built on the sharded parameters, which stay so)
        self._sharded = any(is_sharded(p) for g in optimizer.param_groups for p in g["params"])
        self._saved: list[torch.Tensor] = []
        self._masked: list[torch.Tensor] = []
        self._stepped = False  # a stateless optimizer (SGD without momentum) stays stateless

    @property
    def snapshot_bytes(self) -> int:
        """Bytes of the copies the masking keeps (0 with a fused optimizer)."""
        return sum(t.numel() * t.element_size() for t in self._saved)

    @torch.no_grad()
    def step(self, found_inf: torch.Tensor, as_float: torch.Tensor | None = None) -> None:
        """The base step unless ``found_inf`` (a 0-d bool tensor on the device) is true;
        ``as_float``: the same flag as float32, if the caller has it (a fused optimizer's)."""
        optimizer = self.optimizer
        if not optimizer.state and not self._stepped:  # lazy state: only a finite step makes it
            if not bool(found_inf):  # one read, until the first finite step
                optimizer.step()
                self._stepped = True
            return
        if not self._sharded and supports_found_inf(optimizer):
            flag = found_inf.float() if as_float is None else as_float
            optimizer.grad_scale, optimizer.found_inf = None, flag
            try:
                optimizer.step()
            finally:
                del optimizer.grad_scale, optimizer.found_inf
            return
        masked = self._tensors(found_inf.device)
        if len(masked) != len(self._masked) or any(
            a is not b for a, b in zip(masked, self._masked, strict=True)
        ):
            self._masked, self._saved = masked, [torch.empty_like(t) for t in masked]
        torch._foreach_copy_(self._saved, masked)
        optimizer.step()
        for tensor, saved in zip(masked, self._saved, strict=True):
            torch.where(found_inf, saved, tensor, out=tensor)

    def _tensors(self, device: torch.device) -> list[torch.Tensor]:
        """The local storage of every parameter with a gradient and of its state tensors."""
        tensors = []
        for group in self.optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                tensors.append(local(p))
                state = self.optimizer.state.get(p, {})
                tensors.extend(
                    local(v)
                    for v in state.values()
                    if isinstance(v, torch.Tensor) and v.device == device
                )
        return tensors


class NonFiniteGuard:
    """Counts skipped steps on the device; ``check`` reads them (one host sync) and stops the
    run once ``max_bad_steps`` steps in a row were skipped."""

    def __init__(self, max_bad_steps: int = 10) -> None:
        self.max_bad_steps = max_bad_steps
        self.skipped = 0  # skipped steps counted by the checks so far
        self._counts: torch.Tensor | None = None  # streak, skipped, longest streak: unread
        self._views: tuple[torch.Tensor, ...] = ()  # streak and skipped, then each count
        self._step = 0

    @property
    def streak(self) -> torch.Tensor | int:
        """Skipped steps in a row up to the last one (a device tensor: reading it syncs)."""
        return 0 if self._counts is None else self._counts[0]

    @torch.no_grad()
    def record(self, found_inf: torch.Tensor, step: int) -> None:
        """Count one step, skipped where ``found_inf`` (a bool: 0 or 1 in the int64 counts),
        in three kernels on the device; nothing is read."""
        if self._counts is None:
            self._counts = torch.zeros(3, dtype=torch.int64, device=found_inf.device)
            # made once: indexing is an op per use
            self._views = (self._counts[:2], *self._counts.unbind())
        streak_and_skipped, streak, _, longest = self._views
        streak_and_skipped.add_(found_inf)
        streak.mul_(found_inf)  # (streak + 1) * bad: reset by a finite step
        torch.maximum(longest, streak, out=longest)
        self._step = step

    def check(self) -> int:
        """Read the counts (one host sync): the steps skipped since the last check.

        Raises :class:`NonFiniteError` if ``max_bad_steps`` steps in a row were skipped
        since the last check."""
        if self._counts is None:
            return 0
        _, skipped, longest = self._counts.tolist()
        self._counts[1:] = 0  # a streak that goes on is still counted in _counts[0]
        self.skipped += skipped
        if longest >= self.max_bad_steps:
            raise NonFiniteError(
                f"{longest} consecutive steps had a non-finite loss or gradient "
                f"(up to step {self._step}); lower the learning rate or rho, or raise "
                "trainer.max_bad_steps"
            )
        return skipped
