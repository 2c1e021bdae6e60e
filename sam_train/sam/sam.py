"""Sharpness-Aware Minimization (Foret et al., ICLR 2021) and ASAM (Kwon et al., ICML 2021).

The optimizer follows the de-facto PyTorch convention::

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    optimizer.first_step(zero_grad=True)     # w -> w + eps, eps = rho * g / ||g||
    loss_fn(model(x), y).backward()
    optimizer.second_step(zero_grad=True)    # restore w, base step with the gradient at w + eps

``param_groups`` are the base optimizer's own list, so LR schedulers attached to the SAM
object drive the base optimizer, and ``state_dict()`` carries the base optimizer's state
(momentum buffers). The saved weights are copied back after the second backward pass instead
of subtracting eps, so the restore is exact in floating point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

_NORM_EPS = 1e-12


class SAM(Optimizer):
    """SAM around any base optimizer; ``adaptive=True`` gives ASAM.

    Args:
        params: parameters or parameter groups (each group may set its own ``rho``).
        base_optimizer: an optimizer class, built on the same groups with ``base_kwargs``,
            or an optimizer instance (e.g. from ``timm.optim.create_optimizer_v2``) whose
            groups are then wrapped and ``params`` must be ``None``.
        rho: radius of the neighbourhood searched for the worst-case perturbation.
        adaptive: ASAM: eps = rho * T^2 g / ||T g|| with T = |w| + eta, scale invariant.
        eta: ASAM's offset that keeps T positive for zero weights.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]] | None,
        base_optimizer: type[Optimizer] | Optimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        **base_kwargs: Any,
    ) -> None:
        if rho < 0:
            raise ValueError(f"SAM needs rho >= 0, got {rho}")
        if eta < 0:
            raise ValueError(f"ASAM needs eta >= 0, got {eta}")
        sam_defaults = {"rho": rho, "adaptive": adaptive, "eta": eta}
        if isinstance(base_optimizer, Optimizer):
            if params is not None or base_kwargs:
                raise TypeError("pass params=None and no base kwargs with a built base optimizer")
            # Registers the base optimizer's own group dicts, adding the SAM keys to them.
            super().__init__(
                base_optimizer.param_groups, {**base_optimizer.defaults, **sam_defaults}
            )
            self.base_optimizer = base_optimizer
        else:
            super().__init__(params, {**sam_defaults, **base_kwargs})
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
            self.defaults.update(self.base_optimizer.defaults)
        for group in self.base_optimizer.param_groups:
            if group["rho"] < 0:
                raise ValueError(f"SAM needs rho >= 0, got {group['rho']} in a param group")
        # One list of groups shared by SAM and the base optimizer.
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self._backup: dict[torch.Tensor, torch.Tensor] = {}
        self._perturbed: list[torch.Tensor] = []
        self.last_grad_norm: torch.Tensor | None = None

    @classmethod
    def wrap(cls, base_optimizer: Optimizer, **sam_kwargs: Any) -> SAM:
        """SAM over an optimizer that is already built (timm's factory, param-group rules)."""
        return cls(None, base_optimizer, **sam_kwargs)

    # ----------------------------------------------------------------------------------
    # The perturbation
    # ----------------------------------------------------------------------------------
    def _group_params(self, group: dict[str, Any]) -> list[torch.Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def _scaled_directions(
        self, group: dict[str, Any], params: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return (direction d, the vectors whose joint 2-norm normalises d) for one group.

        SAM: d = g, normalised by ||g||. ASAM: d = T^2 g, normalised by ||T g||.
        """
        grads = [p.grad for p in params]
        if not group["adaptive"]:
            return grads, grads
        scale = torch._foreach_abs(params)
        torch._foreach_add_(scale, group["eta"])
        scaled = torch._foreach_mul(scale, grads)
        return torch._foreach_mul(scaled, scale), scaled

    @torch.no_grad()
    def _grad_norm(self, norm_terms: list[list[torch.Tensor]]) -> torch.Tensor:
        """One fused 2-norm over every group, on the device (no host sync)."""
        per_tensor = [n for terms in norm_terms if terms for n in torch._foreach_norm(terms)]
        if not per_tensor:
            return torch.zeros(())
        return torch.linalg.vector_norm(torch.stack(per_tensor))

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> bool:
        """Move the weights to w + eps, the worst case within radius rho; remember w.

        Returns True when the weights were perturbed and a second pass must follow (variants
        that skip the ascent on some steps return False and keep the gradient).
        """
        groups = [(g, self._group_params(g)) for g in self.param_groups]
        directions, norm_terms = [], []
        for group, params in groups:
            d, n = self._scaled_directions(group, params) if params else ([], [])
            directions.append(d)
            norm_terms.append(n)
        grad_norm = self._grad_norm(norm_terms)
        self.last_grad_norm = grad_norm
        self._perturbed = []
        for (group, params), direction in zip(groups, directions, strict=True):
            if not params:
                continue
            self._save(params)
            scale = group["rho"] / (grad_norm + _NORM_EPS)
            torch._foreach_add_(params, torch._foreach_mul(direction, scale))
            self._perturbed.extend(params)
        if zero_grad:
            self.zero_grad()
        return True

    def _save(self, params: list[torch.Tensor]) -> None:
        """Copy w into buffers kept across steps: SAM's only persistent extra memory."""
        missing = [p for p in params if p not in self._backup]
        for p in missing:
            self._backup[p] = torch.empty_like(p)
        torch._foreach_copy_([self._backup[p] for p in params], params)

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved weights back (exact, unlike w + eps - eps).

        Afterwards ``.grad`` holds what the base optimizer must apply; variants that combine
        gradients (GSAM, LookSAM) do so here.
        """
        if self._perturbed:
            torch._foreach_copy_(self._perturbed, [self._backup[p] for p in self._perturbed])
        self._perturbed = []

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and let the base optimizer apply the gradient taken at w + eps."""
        self.restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Full SAM step; the gradient at w must already be in ``.grad``.

        ``closure`` runs the second forward and backward pass (at w + eps).
        """
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that recomputes loss and gradients")
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    # ----------------------------------------------------------------------------------
    # State: the base optimizer's, so momentum buffers survive a resume
    # ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key in ("rho", "adaptive", "eta"):
            param_group.setdefault(key, self.defaults[key])
        self.base_optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_optimizer!r})"
