"""Flatness measures of a trained network, each on one :class:`Objective`.

* SAM sharpness (Foret et al., 2021): max_{||eps|| <= rho} L(w + eps) - L(w), estimated by
  projected normalised gradient ascent from the SAM point w + rho g / ||g|| (a lower bound
  that tightens with more steps).
* The top Hessian eigenvalue by power iteration on exact Hessian-vector products (the SAM
  paper's Figure 3 measure; PyHessian's method), and the trace by Hutchinson's estimator.
* Loss along filter-normalised random directions (Li et al., NeurIPS 2018, "Visualizing the
  Loss Landscape of Neural Nets"): each filter of the direction gets its weight filter's norm,
  so networks of different scale are comparable.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from sam_train.analysis.objective import Objective, Vector
from sam_train.sam.sam import global_dot as dot
from sam_train.sam.sam import global_norm as norm

_TINY = 1e-12


def _randn_like(params: Vector, generator: torch.Generator) -> Vector:
    return [torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for p in params]


def _scaled(v: Vector, scale: float | torch.Tensor) -> Vector:
    return torch._foreach_mul(v, scale)


def sam_sharpness(
    objective: Objective,
    rho: float,
    *,
    steps: int = 20,
    step_size: float | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Worst loss increase within the 2-norm ball of radius ``rho``, by ``steps`` ascent steps.

    Each step moves eps by ``step_size`` (default rho) along the normalised gradient at
    w + eps and projects back onto the ball; the best point seen is reported. At an exact
    critical point (zero gradient) the ascent starts from a random point on the sphere.
    """
    generator = generator or torch.Generator().manual_seed(0)
    step_size = rho if step_size is None else step_size
    base, grad = objective.gradient()
    grad_norm = norm(grad)
    if grad_norm.item() > _TINY:
        eps = _scaled(grad, rho / grad_norm)
    else:
        eps = _randn_like(objective.params, generator)
        eps = _scaled(eps, rho / norm(eps))
    best = -math.inf
    for _ in range(steps + 1):
        with objective.moved(eps):
            value, grad = objective.gradient()
        best = max(best, value)
        grad_norm = norm(grad)
        if grad_norm.item() <= _TINY:
            break
        torch._foreach_add_(eps, _scaled(grad, step_size / grad_norm))
        eps_norm = norm(eps)
        if eps_norm.item() > rho:
            eps = _scaled(eps, rho / eps_norm)
    return {"rho": rho, "sharpness": best - base, "loss": base, "perturbed_loss": best}


def top_hessian_eigenvalue(
    objective: Objective,
    *,
    iterations: int = 100,
    tolerance: float = 1e-4,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """The eigenvalue of largest magnitude of the Hessian at w, by power iteration.

    Stops when the Rayleigh quotient changes by less than ``tolerance`` (relative).
    """
    generator = generator or torch.Generator().manual_seed(0)
    v = _randn_like(objective.params, generator)
    v = _scaled(v, 1.0 / norm(v))
    eigenvalue, converged, done = 0.0, False, 0
    for done in range(1, iterations + 1):
        hv = objective.hvp(v)
        estimate = dot(hv, v).item()  # Rayleigh quotient of the unit vector v
        hv_norm = norm(hv)
        if hv_norm.item() <= _TINY:
            eigenvalue, converged = 0.0, True
            break
        v = _scaled(hv, 1.0 / hv_norm)
        if done > 1 and abs(estimate - eigenvalue) <= tolerance * max(abs(eigenvalue), _TINY):
            eigenvalue, converged = estimate, True
            break
        eigenvalue = estimate
    return {"eigenvalue": eigenvalue, "iterations": done, "converged": converged}


def hessian_trace(
    objective: Objective, *, samples: int = 20, generator: torch.Generator | None = None
) -> dict[str, Any]:
    """Hutchinson's estimate of tr(H) = E[v^T H v] with Rademacher v, and its standard error."""
    generator = generator or torch.Generator().manual_seed(0)
    values = []
    for _ in range(samples):
        v = [
            (torch.randint(0, 2, p.shape, generator=generator) * 2 - 1).to(p)
            for p in objective.params
        ]
        values.append(dot(objective.hvp(v), v).item())
    mean = sum(values) / len(values)
    spread = (
        math.sqrt(sum((x - mean) ** 2 for x in values) / (len(values) - 1) / len(values))
        if len(values) > 1
        else math.nan
    )
    return {"trace": mean, "std_error": spread, "samples": samples}


def filter_normalized_direction(
    params: Vector, generator: torch.Generator, *, ignore_1d: bool = True
) -> Vector:
    """A Gaussian direction rescaled filter by filter to the norms of the weights' filters.

    A filter is one slice along the first dimension (a conv output channel, a linear row).
    1-D parameters (biases, norm-layer weights) get a zero direction, as in Li et al.'s
    default (``ignore_1d=False`` scales them as one filter instead).
    """
    direction = []
    for p, d in zip(params, _randn_like(params, generator), strict=True):
        if p.dim() <= 1:
            if ignore_1d:
                d.zero_()
            else:
                d.mul_(p.norm() / (d.norm() + _TINY))
        else:
            d_flat, p_flat = d.view(d.shape[0], -1), p.detach().reshape(p.shape[0], -1)
            d_flat.mul_(
                p_flat.norm(dim=1, keepdim=True) / (d_flat.norm(dim=1, keepdim=True) + _TINY)
            )
        direction.append(d)
    return direction


def loss_along(objective: Objective, directions: list[Vector], coords: list[tuple]) -> list:
    """L(w + sum_i c_i d_i) for each tuple of coefficients c in ``coords``."""
    values = []
    for c in coords:
        offset = [torch.zeros_like(p) for p in objective.params]
        for coef, d in zip(c, directions, strict=True):
            torch._foreach_add_(offset, d, alpha=coef)
        with objective.moved(offset):
            values.append(objective.value())
    return values


def landscape_1d(objective: Objective, direction: Vector, alphas: list[float]) -> list[float]:
    """L(w + a d) for a in ``alphas``."""
    return loss_along(objective, [direction], [(a,) for a in alphas])


def landscape_2d(
    objective: Objective, d1: Vector, d2: Vector, alphas: list[float], betas: list[float]
) -> list[list[float]]:
    """L(w + a d1 + b d2); rows follow ``betas``, columns ``alphas``."""
    flat = loss_along(objective, [d1, d2], [(a, b) for b in betas for a in alphas])
    n = len(alphas)
    return [flat[i * n : (i + 1) * n] for i in range(len(betas))]
