"""Bayesian SAM, bSAM (Möllenhoff & Khan, ICLR 2023, "SAM as an Optimal Relaxation of Bayes",
Algorithm 1): SAM as a variational method over a Gaussian posterior N(w, 1/(N s)) with a
per-weight precision s, and an Adam-like update of its own.

Each step, with N the training set's size, delta the prior precision, gamma the damping:

1. the first pass at a sample theta = w + noise, noise ~ N(0, 1/(N s)), gives g;
2. eps = rho * g / s (no normalisation: s scales it), the second pass at w + eps gives g_eps;
3. g_m <- beta1 g_m + (1 - beta1) (g_eps + delta w);
   s   <- beta2 s   + (1 - beta2) (sqrt(s) |g| + delta + gamma);
   w   <- w - lr * g_m / s (the base optimizer, plain SGD without momentum or weight decay,
   applies g_m / s with its learning rate and schedule).

s starts at ``init_scale`` (1, as pytorch_optimizer). Where pytorch_optimizer 4.1's ``BSAM``
differs (read from its code, and shown by the test): its noise has standard deviation
1 / (N s) (the paper's variance), neither the noise nor eps is taken back before the update,
its s update squares (sqrt(s)|g| + delta + gamma), and its momentum averages delta * g
instead of g_eps + delta w. Defaults are its defaults (rho 0.05, delta 1e-4, gamma 0.1, betas
0.9 and 0.999).

Cost: SAM's two passes; memory: w's copy, g_m, s and |g| (three gradient-sized buffers), all
in ``state_dict()["sam"]`` with the noise generator. Under DDP the first gradient is
all-reduced (every replica keeps the same s) and the noise comes from a generator seeded by
the run's seed. g_m and s are updated even on a step the trainer skips as non-finite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from sam_train.sam.sam import SAM, global_norm
from sam_train.sam.sharded import copy_all


class BayesianSAM(SAM):
    """bSAM over a plain SGD base optimizer (which applies g_m / s).

    Args:
        num_examples: N, the training set's size (the posterior's scale).
        prior_precision: delta; damping: gamma; betas: (beta1, beta2).
        init_scale: s at the start.
        seed: seeds the noise (the same on every replica).
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    combines_gradients = True  # |g| of the first pass enters s: the same on every replica

    def __init__(
        self,
        *args: Any,
        num_examples: int,
        prior_precision: float = 1e-4,
        damping: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        init_scale: float = 1.0,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if num_examples < 1 or init_scale <= 0 or prior_precision < 0 or damping < 0:
            raise ValueError("BayesianSAM needs N >= 1, init_scale > 0, delta and gamma >= 0")
        for group in self.param_groups:
            if group.get("momentum", 0) or group.get("weight_decay", 0):
                raise ValueError("BayesianSAM's base optimizer is SGD without momentum or decay")
        self.num_examples, self.init_scale = int(num_examples), float(init_scale)
        self.prior_precision, self.damping = float(prior_precision), float(damping)
        self.betas = (float(betas[0]), float(betas[1]))
        self._noise_seed = int(seed)
        self._noise: dict[str, torch.Generator] = {}
        self._scale: dict[torch.Tensor, torch.Tensor] = {}  # s
        self._momentum: dict[torch.Tensor, torch.Tensor] = {}  # g_m
        self._abs_grad: dict[torch.Tensor, torch.Tensor] = {}  # |g| of the first pass
        self._noisy: list[torch.Tensor] = []

    def _s(self, p: torch.Tensor) -> torch.Tensor:
        if p not in self._scale:
            self._scale[p] = torch.full_like(p, self.init_scale)
        return self._scale[p]

    def _generator(self, device: torch.device) -> torch.Generator:
        if str(device) not in self._noise:
            self._noise[str(device)] = torch.Generator(device=device).manual_seed(self._noise_seed)
        return self._noise[str(device)]

    @torch.no_grad()
    def before_first_pass(self) -> None:
        """w -> theta = w + noise, noise ~ N(0, 1/(N s)); w is kept to come back to."""
        params = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        self._keep(self._backup, params, params)
        for p in params:
            noise = torch.randn(p.shape, generator=self._generator(p.device), device=p.device)
            p.add_(noise.to(p.dtype) / (self.num_examples * self._s(p)).sqrt())
        self._noisy = params

    @torch.no_grad()
    def first_step(
        self, zero_grad: bool = False, ascent_closure: Callable[[], Any] | None = None
    ) -> bool:
        """Back to w, then w + eps with eps = rho * g / s; |g| is kept for s's update."""
        groups = self._groups_with_grads()
        params = [p for _, group_params in groups for p in group_params]
        if self._noisy:
            copy_all(self._noisy, [self._backup[p] for p in self._noisy])
        else:  # no noisy pass (a closure-driven step): w is where the gradient was taken
            self._keep(self._backup, params, params)
        self._noisy = []
        grads = [p.grad for p in params]
        self._keep(self._abs_grad, params, torch._foreach_abs(grads))
        self.last_grad_norm = global_norm(grads)
        for group, group_params in groups:
            rho = self._group_rho(group)
            for p in group_params:
                p.add_(p.grad / self._s(p), alpha=rho)
        self._steps += 1
        self._step_params, self._perturbed = params, params
        self._pending_combine, self._did_perturb = True, True
        if zero_grad:
            self.zero_grad()
        return True

    def _combine_gradients(self, perturbed: bool) -> None:
        """g_m and s updated; ``.grad`` becomes g_m / s for the base SGD step."""
        beta1, beta2 = self.betas
        delta = self.prior_precision
        for p in self._step_params:
            s = self._s(p)
            if p not in self._momentum:
                self._momentum[p] = torch.zeros_like(p)
            g_m = self._momentum[p]
            g_m.mul_(beta1).add_(p.grad + delta * p, alpha=1 - beta1)
            target = s.sqrt() * self._abs_grad[p] + delta + self.damping
            s.mul_(beta2).add_(target, alpha=1 - beta2)
            p.grad.copy_(g_m / s)

    def _extra_state(self) -> dict[str, Any]:
        return {
            **super()._extra_state(),
            "steps": self._steps,
            "scale": self._buffers_to_state(self._scale),
            "momentum": self._buffers_to_state(self._momentum),
            "noise": {device: g.get_state() for device, g in self._noise.items()},
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
        self._scale = self._buffers_from_state(state.get("scale", {}))
        self._momentum = self._buffers_from_state(state.get("momentum", {}))
        for device, rng_state in state.get("noise", {}).items():
            self._generator(torch.device(device)).set_state(rng_state)
