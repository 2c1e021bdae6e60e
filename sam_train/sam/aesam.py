"""AE-SAM (Jiang, Yang, Zhang & Kwok, ICLR 2023, "An Adaptive Policy to Employ
Sharpness-Aware Minimization", Algorithm 1 with SAM as the sharpness-aware update).

After the first pass, the squared norm of the stochastic gradient, s_t = ||g_t||^2, updates
exponential moving estimates of its mean and variance (forgetting rate delta):

    mu_t      = delta * mu_{t-1}      + (1 - delta) * s_t
    sigma_t^2 = delta * sigma_{t-1}^2 + (1 - delta) * (s_t - mu_t)^2

and the step is a SAM step when s_t >= mu_t + c_t * sigma_t (the iterate is in a sharp region),
a plain base-optimizer step with g_t otherwise. The threshold moves linearly over training,
c_t = lambda_1 + (lambda_2 - lambda_1) * t / T, from mostly SAM early to mostly plain steps
late; T is the run's number of steps (without it, c_t = lambda_1 throughout). mu and sigma
start at 0.

Defaults: delta = 0.9, lambda_1 = -1, lambda_2 = 1 (chosen here as a symmetric schedule, about
half of the steps SAM steps for Gaussian s_t; tune them on validation seeds).

Costs: the decision reads s_t on the host once per step (a device sync on a GPU, which the
other variants avoid); on average 1 + (fraction of SAM steps) forward-backward passes. Under DDP
the first gradient is always all-reduced, so that every replica decides on the same s_t; the
perturbation then comes from the averaged gradient (not each replica's own). The statistics are
in ``state_dict()["sam"]``. fp16 is refused by the config (s_t would carry the loss scale).
"""

from __future__ import annotations

from typing import Any

from sam_train.sam._options import within
from sam_train.sam.sam import SAM, global_norm


class AESAM(SAM):
    """SAM on the steps whose squared gradient norm stands out; the base step otherwise.

    Args:
        ema_decay: delta, the forgetting rate of the running mean and variance, in [0, 1).
        threshold_start, threshold_end: lambda_1 and lambda_2 of the linear schedule of c_t.
        total_steps: T; None keeps c_t = ``threshold_start``.
        ``params``, ``base_optimizer`` and the other options as :class:`SAM`.
    """

    samples_weights = False  # uses the first gradient beyond the ascent (SAM.samples_weights)

    #: Whether a step ascends depends on ||g||^2 against its running statistics, read on the
    #: host (the test of the sync-free step holds every other variant to zero reads).
    host_reads_per_step = 1

    def __init__(
        self,
        *args: Any,
        ema_decay: float = 0.9,
        threshold_start: float = -1.0,
        threshold_end: float = 1.0,
        total_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        within("AESAM", "[0, 1)", ema_decay=ema_decay)
        if total_steps is not None and total_steps < 1:
            raise ValueError(f"AESAM needs total_steps >= 1, got {total_steps}")
        self.ema_decay = float(ema_decay)
        self.threshold_start = float(threshold_start)
        self.threshold_end = float(threshold_end)
        self.total_steps = total_steps
        self.mean = 0.0
        self.var = 0.0
        self.sam_steps = 0  # steps that took the ascent, for the logged fraction

    def needs_synced_first_pass(self) -> bool:
        return True  # every replica must decide on the same gradient

    def threshold(self) -> float:
        """c_t at the coming step."""
        if self.total_steps is None:
            return self.threshold_start
        fraction = min(self._steps / self.total_steps, 1.0)
        return self.threshold_start + (self.threshold_end - self.threshold_start) * fraction

    def will_perturb(self) -> bool:
        grads = [p.grad for _, params in self._groups_with_grads() for p in params]
        squared = float(global_norm(grads)) ** 2  # the host read the docstring mentions
        delta = self.ema_decay
        self.mean = delta * self.mean + (1 - delta) * squared
        self.var = delta * self.var + (1 - delta) * (squared - self.mean) ** 2
        sharp = squared >= self.mean + self.threshold() * self.var**0.5
        self.sam_steps += int(sharp)
        return sharp

    def _extra_state(self) -> dict[str, Any]:
        return {
            **super()._extra_state(),
            "steps": self._steps,
            "mean": self.mean,
            "var": self.var,
            "sam_steps": self.sam_steps,
        }

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        super()._load_extra_state(state)
        self._steps = int(state.get("steps", 0))
        self.mean = float(state.get("mean", 0.0))
        self.var = float(state.get("var", 0.0))
        self.sam_steps = int(state.get("sam_steps", 0))
