"""Sharpness-Aware Minimization (Foret et al., ICLR 2021), ASAM (Kwon et al., ICML 2021), and the
base class every SAM variant in this package shares.

The optimizer follows the de-facto PyTorch convention::

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1, momentum=0.9)
    loss_fn(model(x), y).backward()
    if optimizer.first_step(zero_grad=True):  # w -> w + eps, eps = rho * g / ||g||
        loss_fn(model(x), y).backward()       # the gradient at w + eps
    optimizer.second_step(zero_grad=True)     # restore w, base step

``param_groups`` are the base optimizer's own list, so LR schedulers attached to the SAM object
drive the base optimizer, and ``state_dict()`` is the base optimizer's (momentum buffers), plus a
``"sam"`` entry for the variants that keep state across steps. The weights are put back after
the second backward pass instead of subtracting eps, so the restore is exact: w + eps is written
into a buffer kept across steps, and each parameter trades storage with its buffer for the
second pass and back (``swap_weights``; no copy of the weights either way), or, on FSDP's
shards and with ``inner_steps > 1``, w is copied into the buffer and back.

Options every variant inherits (each defaults to the paper's SAM):

* ``p=2`` or ``p=float("inf")``: the norm of the neighbourhood (the paper's Eq. 2 and its
  p-ablation): eps = rho * g / ||g||_2, or eps = rho * sign(g) for p = inf.
* ``perturb_fraction=beta``: ESAM's stochastic weight perturbation (Du et al., ICLR 2022), as
  its official code (dydjw9/Efficient_SAM, ``utils/Esam.py``) does it: each parameter tensor
  is perturbed with probability beta, eps = rho / beta * g_S / ||g_S|| over the drawn set S,
  and the others' first-pass weight gradients are not computed (``choose_perturbed`` stops
  them requiring gradients until ``first_step``): that is the saving. The official code draws
  S after each step for the next one (every tensor on the first step); here S is drawn
  before each step's first pass, from a generator of its own (``seed``).
* ``include_weight_decay=True``: the ascent gradient is g + wd * w, with each group's
  ``weight_decay``, as in the paper's JAX code where the L2 term is part of the loss; by default
  decay stays in the base optimizer only (the common PyTorch convention).
* ``inner_steps=K``: K normalised ascent steps of length rho / K (the paper's multi-step
  ablation); steps after the first need ``ascent_closure`` to recompute the gradient at the
  current perturbed weights. K = 1 is SAM exactly.

How a variant plugs in: ``will_perturb`` (does this step ascend at all), ``_ascent_gradients``
(what the ascent follows), ``_group_rho`` (the radius now), ``_combine_gradients`` (what the
base optimizer applies, called by ``restore``), ``_extra_state``/``_load_extra_state``. Its
constructor is ``__init__(self, *args, <its knobs, keyword-only>, **kwargs)``: ``params``, the
base optimizer and SAM's options pass through to this class unchanged, so every variant is
called as ``SAM`` is and checks them once, here.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim import Optimizer

from sam_train.sam.sharded import (
    copy_all,
    drop_grads,
    full,
    is_sharded,
    laid_out_like,
    replicated_value,
)

_NORM_EPS = 1e-12
_SAM_GROUP_KEYS = ("rho", "adaptive", "eta")

Groups = list[tuple[dict[str, Any], list[torch.Tensor]]]
#: What a SAM optimizer is built on: parameters or groups (``None`` with a built base optimizer).
Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]] | None
#: The base optimizer: a class built on the same groups, or an instance to wrap.
BaseOptimizer = type[Optimizer] | Optimizer
#: An ascent step, per group: the directions and the factor that scales them to eps.
Moves = list[tuple[list[torch.Tensor], torch.Tensor | float]]


def non_negative(variant: str, **values: float) -> None:
    """A ValueError naming the first of ``values`` below 0: the variants' argument checks."""
    for name, value in values.items():
        if value < 0:
            raise ValueError(f"{variant} needs {name} >= 0, got {value}")


def _check_arguments(
    rho: float, eta: float, p: float, perturb_fraction: float, inner_steps: int
) -> None:
    non_negative("SAM", rho=rho)
    non_negative("ASAM", eta=eta)
    if not (p == 2 or (math.isinf(p) and p > 0)):
        raise ValueError(f"SAM's p must be 2 or inf, got {p}")
    if not 0.0 < perturb_fraction <= 1.0:
        raise ValueError(f"perturb_fraction must be in (0, 1], got {perturb_fraction}")
    if int(inner_steps) != inner_steps or inner_steps < 1:
        raise ValueError(f"inner_steps must be a positive integer, got {inner_steps}")


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The 2-norm of all tensors as one vector, fused and on the device (no host sync); over
    every shard for FSDP's DTensors (as ``torch.nn.utils.get_total_norm`` computes it)."""
    if not tensors:
        return torch.zeros(())
    return replicated_value(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(tensors))))


def global_dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """The inner product of two lists of tensors seen as two flat vectors (over every shard:
    DTensor cannot flatten an unevenly sharded tensor, so shards multiply elementwise)."""
    if a and is_sharded(a[0]):
        return replicated_value(
            torch.stack([(x * y).sum() for x, y in zip(a, b, strict=True)]).sum()
        )
    dots = [torch.vdot(x.flatten(), y.flatten()) for x, y in zip(a, b, strict=True)]
    return torch.stack(dots).sum()


def trade_storage(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    """Each ``a[i]`` takes ``b[i]``'s storage and ``b[i]`` takes ``a[i]``'s: the tensor objects
    stay (parameters keep their identity, their optimizer state and autograd hooks), no byte
    moves, and no op runs (nothing for a device queue)."""
    for x, y in zip(a, b, strict=True):
        x.data, y.data = y.data, x.data


def _add_in_place(params: list[torch.Tensor], moves: Moves) -> None:
    """w += eps in fused multi-tensor ops (the copy path: FSDP's shards, several ascent steps)."""
    for step, factor in moves:
        torch._foreach_mul_(step, factor)
    torch._foreach_add_(params, [e for step, _ in moves for e in step])


def _swap_in(params: list[torch.Tensor], moves: Moves, backup: list[torch.Tensor]) -> None:
    """w + eps written into ``backup``, then each parameter trades storage with its buffer: the
    model runs at w + eps while w lies untouched in the backup until ``restore`` trades back.
    One pass over the weights instead of three (copy w out, add eps, copy w back); eps and the
    sum are ``_add_in_place``'s products and sums, bit for bit, each direction scaled just
    before it is added (still in the cache)."""
    scaled = ((e, factor) for step, factor in moves for e in step)
    for w, (e, factor), out in zip(params, scaled, backup, strict=True):
        torch.add(w, e.mul_(factor), out=out)
    trade_storage(params, backup)


class SAM(Optimizer):
    """SAM around any base optimizer; ``adaptive=True`` gives ASAM. The base of every variant.

    Args:
        params: parameters or parameter groups (each group may set its own ``rho``).
        base_optimizer: an optimizer class, built on the same groups with ``base_kwargs``,
            or an optimizer instance (e.g. from ``timm.optim.create_optimizer_v2``) whose
            groups are then wrapped and ``params`` must be ``None``.
        rho: radius of the neighbourhood searched for the worst-case perturbation.
        adaptive: ASAM: eps = rho * T^2 g / ||T g|| with T = |w| + eta, scale invariant
            (for p = inf: eps = rho * T sign(g)).
        eta: ASAM's offset that keeps T positive for zero weights.
        p: 2 or ``float("inf")``, the norm of the neighbourhood.
        perturb_fraction: ESAM's beta in (0, 1]; 1 perturbs every weight.
        include_weight_decay: add each group's ``weight_decay * w`` to the ascent gradient.
        inner_steps: number of ascent steps (each after the first costs a forward-backward).
        unscaled_params: parameters ASAM leaves unscaled (T = 1). The official ASAM code
            scales only parameters named ``*weight*``, so its rho values assume biases are
            left out; ``None`` scales every parameter (davda54/sam's convention).
    """

    #: True for variants that combine the gradient at w with the perturbed one (GSAM,
    #: LookSAM): the gradient at w is kept, and under DDP it must be the all-reduced one so
    #: that every replica combines the same vectors.
    combines_gradients: bool = False
    #: True for variants that perturb before the step's only pass (MSAM): the step calls
    #: ``perturb_before_pass``, runs one forward-backward (all-reduced), then ``restore``.
    single_pass: bool = False
    #: True for variants whose passes run on part of the batch (K-SAM, ESAM's data
    #: selection): the step runs ``sam_train.step.selection.selected_passes``.
    selects_examples: bool = False
    select_before_ascent: bool = False  # rank the examples at w (K-SAM), or after eps (ESAM)
    select_fraction: float = 1.0
    #: False for variants that use the first pass's gradient beyond the ascent (combine it,
    #: apply it on the steps without ascent, average it): ESAM's stochastic weight
    #: perturbation leaves out the gradients of the tensors it does not perturb, so it is
    #: refused there (``sam_train.config.schema.WEIGHT_PERTURBATION_VARIANTS`` lists the rest).
    samples_weights: bool = True
    #: Move the weights by trading storage with the backup (one pass over the weights, none to
    #: restore) rather than copying them there and back; False copies (for comparison: the
    #: update is bit-identical). FSDP's sharded parameters and ``inner_steps > 1`` always copy.
    swap_weights: bool = True

    def __init__(
        self,
        params: Params,
        base_optimizer: BaseOptimizer,
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        *,
        p: float = 2,
        perturb_fraction: float = 1.0,
        include_weight_decay: bool = False,
        inner_steps: int = 1,
        unscaled_params: Iterable[torch.Tensor] | None = None,
        seed: int | None = None,
        **base_kwargs: Any,
    ) -> None:
        _check_arguments(rho, eta, p, perturb_fraction, inner_steps)
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
        self.p = float(p)
        self.perturb_fraction = float(perturb_fraction)
        self.include_weight_decay = bool(include_weight_decay)
        self.inner_steps = int(inner_steps)
        self._unscaled = {id(p) for p in unscaled_params or ()}
        self.last_grad_norm: torch.Tensor | None = None
        self._steps = 0  # first_step calls so far: the clock of the periodic variants
        self._backup: dict[torch.Tensor, torch.Tensor] = {}
        self._first_grad: dict[torch.Tensor, torch.Tensor] = {}
        # id(store) -> (store, the parameters, their buffers in store): see _kept
        self._kept_lists: dict[int, tuple[dict, list[torch.Tensor], list[torch.Tensor]]] = {}
        self._perturbed: list[torch.Tensor] = []  # moved by the last ascent: restore them
        self._swapped = False  # ...by trading storage with their backups (else: copy back)
        self._step_params: list[torch.Tensor] = []
        self._did_perturb = False
        self._pending_combine = False
        self._kept_grads: list[tuple[torch.Tensor | None, int]] = []  # after a skipped ascent
        self._init_draws(seed)

    def _init_draws(self, seed: int | None) -> None:
        """ESAM's draws come from a generator of their own: the engine rewinds the global one
        before the second pass (same dropout draws), which would rewind a draw from it too,
        and in a model without random layers repeat the same draw every step. ``seed`` (the
        run's, the same on every replica) makes FSDP's ranks perturb the same tensors."""
        if self.perturb_fraction < 1.0 and not self.samples_weights:
            raise ValueError(
                f"{type(self).__name__} uses the first gradient beyond the ascent: "
                "perturb_fraction (ESAM's stochastic weight perturbation) does not apply"
            )
        if seed is None:
            seed = int(torch.randint(0, 2**62, ()).item()) if self.perturb_fraction < 1.0 else 0
        self._mask_seed = int(seed)
        self._mask_generators: dict[str, torch.Generator] = {}
        self._drawn: set[torch.Tensor] | None = None  # this step's S, until first_step
        self._frozen: list[torch.Tensor] = []  # S's complement, without gradients meanwhile

    @classmethod
    def wrap(cls, base_optimizer: Optimizer, **sam_kwargs: Any) -> SAM:
        """This variant over an optimizer that is already built (timm's factory, group rules)."""
        return cls(None, base_optimizer, **sam_kwargs)

    # ----------------------------------------------------------------------------------
    # Hooks for the variants
    # ----------------------------------------------------------------------------------
    def will_perturb(self) -> bool:
        """Whether the coming ``first_step`` ascends (and so a second pass must follow)."""
        return True

    def needs_synced_first_pass(self) -> bool:
        """Under DDP: must the first pass's gradient be all-reduced?

        Yes when no second pass follows (that gradient is the one applied) and when the
        variant combines it with the perturbed gradient; otherwise each replica perturbs with
        its own gradient (the paper's m-sharpness).
        """
        return self.combines_gradients or not self.will_perturb()

    def _group_rho(self, group: dict[str, Any]) -> float:
        """The radius for this group now (GSAM schedules it)."""
        return group["rho"]

    def _ascent_gradients(
        self, group: dict[str, Any], params: list[torch.Tensor], inner_step: int
    ) -> list[torch.Tensor]:
        """The gradient the ascent follows: ``.grad`` (+ ``weight_decay * w`` if asked)."""
        grads = [p.grad for p in params]
        weight_decay = group.get("weight_decay", 0.0)
        if self.include_weight_decay and weight_decay:  # g + wd w, in .grad: zeroed after
            torch._foreach_add_(grads, params, alpha=weight_decay)
        return grads

    def _combine_gradients(self, perturbed: bool) -> None:
        """Leave in ``.grad`` what the base optimizer applies; SAM keeps the perturbed one."""

    def perturb_before_pass(
        self, images: torch.Tensor | None = None, indices: torch.Tensor | None = None
    ) -> bool:
        """``single_pass`` variants: prepare the step's one pass (MSAM moves w; MESA and SAF
        set the reference outputs of ``images``, SAF by their ``indices``); True when the
        weights were moved (``restore`` puts them back)."""
        return False

    def before_first_pass(self) -> None:
        """Two-pass variants: move w before the first pass (bSAM's noise); none by default."""

    def reference_forwards(self) -> int:
        """Examples run forward (no gradient) by ``perturb_before_pass`` this step (MESA)."""
        return 0

    def _extra_state(self) -> dict[str, Any]:
        """State beyond the base optimizer's that a resume needs (saved under ``"sam"``)."""
        if not self._mask_generators:
            return {}
        return {"mask_generators": {k: g.get_state() for k, g in self._mask_generators.items()}}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        for device, rng_state in state.get("mask_generators", {}).items():
            self._mask_generator(torch.device(device)).set_state(rng_state)

    # ----------------------------------------------------------------------------------
    # The perturbation
    # ----------------------------------------------------------------------------------
    def _groups_with_grads(self) -> Groups:
        groups = [(g, [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        return [(g, params) for g, params in groups if params]

    def _mask_generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._mask_generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self._mask_seed)
            self._mask_generators[key] = generator
        return self._mask_generators[key]

    def choose_perturbed(self, freeze: bool = False) -> None:
        """ESAM's stochastic weight perturbation: draw the tensors the coming ascent moves,
        each with probability beta (a CPU generator: no device sync). With ``freeze`` the
        others stop requiring gradients until ``first_step``, so the first backward skips
        their weight gradients; the caller freezes only where that pass is not all-reduced
        (DDP's reducer expects every gradient there) and the parameters are not sharded."""
        if self.perturb_fraction >= 1.0:
            return
        params = self._all_params()
        draws = torch.rand(len(params), generator=self._mask_generator(torch.device("cpu")))
        self._drawn = {
            p for p, u in zip(params, draws.tolist(), strict=True) if u < self.perturb_fraction
        }
        if freeze and self._drawn:  # none drawn: eps = 0, and the pass needs some gradient
            self._frozen = [p for p in params if p not in self._drawn and p.requires_grad]
            for p in self._frozen:
                p.requires_grad_(False)

    def _take_drawn(self) -> None:
        """Unfreeze; drop the first-pass gradients of the tensors outside this step's S (drawn
        now if the caller did not call ``choose_perturbed``)."""
        for p in self._frozen:
            p.requires_grad_(True)
        self._frozen = []
        if self.perturb_fraction >= 1.0:
            return
        if self._drawn is None:
            self.choose_perturbed()
        drawn, self._drawn = self._drawn, None
        for p in self._all_params():
            if p not in drawn:
                p.grad = None

    def _adaptive_scale(
        self, group: dict[str, Any], params: list[torch.Tensor], inner_step: int
    ) -> list:
        """ASAM's T = |w| + eta, and 1 for the parameters it leaves unscaled (w: the weights
        before the ascent, in the backup once the first inner step moved them)."""
        weights = params if inner_step == 0 else [self._backup[p] for p in params]
        scale = torch._foreach_abs(weights)
        torch._foreach_add_(scale, group["eta"])
        if self._unscaled:
            for p, t in zip(params, scale, strict=True):
                if id(p) in self._unscaled:
                    t.fill_(1.0)
        return scale

    def _ascent_step(self, groups: Groups, inner_step: int) -> tuple[torch.Tensor, Moves]:
        """One ascent step of length rho / inner_steps: its norm, and per group the directions
        and the factor that makes them eps (the caller scales them and moves the weights).

        The step is computed in the storage of the ascent gradients (``.grad``, zeroed or
        restored by ``first_step``, or a variant's own temporaries), so the only
        parameter-sized buffer SAM keeps is the weight backup; ASAM needs one more, its T.
        """
        steps, scales = [], []
        for group, params in groups:
            grads = list(self._ascent_gradients(group, params, inner_step))
            scale = self._adaptive_scale(group, params, inner_step) if group["adaptive"] else None
            if scale is not None:
                torch._foreach_mul_(grads, scale)  # T g: its norm normalises
            steps.append(grads)
            scales.append(scale)
        norm = global_norm([g for grads in steps for g in grads])
        moves: Moves = []
        for (group, _), step, scale in zip(groups, steps, scales, strict=True):
            if self.p != 2:
                torch._foreach_sign_(step)  # sign(T g) = sign(g): T > 0
            if scale is not None:
                torch._foreach_mul_(step, scale)  # T^2 g, or T sign(g)
            # ESAM's 1/beta: S carries about beta of the gradient (1 otherwise, exactly)
            radius = self._group_rho(group) / self.inner_steps / self.perturb_fraction
            moves.append((step, radius / (norm + _NORM_EPS) if self.p == 2 else radius))
        return norm, moves

    @torch.no_grad()
    def first_step(
        self, zero_grad: bool = False, ascent_closure: Callable[[], Any] | None = None
    ) -> bool:
        """Move the weights to w + eps, the worst case within radius rho; remember w.

        Returns True when the weights were perturbed and a second pass must follow. Variants
        that skip the ascent on some steps return False and keep the gradient (``zero_grad``
        is then ignored). ``ascent_closure`` recomputes the gradient at the current weights
        (the gradients are zeroed before each call); only ``inner_steps > 1`` needs it.
        """
        self._take_drawn()
        groups = self._groups_with_grads()
        perturb = self.will_perturb()
        self._steps += 1
        self._step_params = [p for _, params in groups for p in params]
        self._pending_combine = True
        self._did_perturb = perturb
        self._perturbed = []
        self._kept_grads = []
        if not perturb:
            self.last_grad_norm = global_norm([p.grad for p in self._step_params])
            self._kept_grads = [(p.grad, p.grad._version) for p in self._step_params]
            return False
        if self.inner_steps > 1 and ascent_closure is None:
            raise RuntimeError("inner_steps > 1 needs an ascent_closure to recompute gradients")
        params = self._step_params
        backup = self._kept(self._backup, params)
        swap = self.swap_weights and self.inner_steps == 1 and not any(map(is_sharded, params[:1]))
        if not swap:
            copy_all(backup, params)
        if self.combines_gradients:
            self._keep(self._first_grad, params, [p.grad for p in params])
        self._perturbed, self._swapped = params, swap
        for inner_step in range(self.inner_steps):
            if inner_step:
                self.zero_grad(set_to_none=False)
                with torch.enable_grad():
                    ascent_closure()
            kept = None if zero_grad else [p.grad.clone() for p in params]
            norm, moves = self._ascent_step(groups, inner_step)
            if swap:
                _swap_in(params, moves, backup)
            else:
                _add_in_place(params, moves)
            if kept is not None:  # the caller keeps the gradient: put it back
                copy_all([p.grad for p in params], kept)
            if inner_step == 0:
                self.last_grad_norm = norm
            else:  # report a non-finite later gradient (fp16 overflow) so the step is skipped
                self.last_grad_norm = torch.where(torch.isfinite(norm), self.last_grad_norm, norm)
        if zero_grad:
            drop_grads(p for group in self.param_groups for p in group["params"])
        return True

    def _keep(
        self,
        store: dict[torch.Tensor, torch.Tensor],
        params: list[torch.Tensor],
        values: list[torch.Tensor],
    ) -> None:
        """Copy ``values`` into buffers kept across steps (allocated once per parameter)."""
        copy_all(self._kept(store, params, values), values)

    def _kept(
        self,
        store: dict[torch.Tensor, torch.Tensor],
        params: list[torch.Tensor],
        like: list[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        """``[store[p] for p in params]``, allocating missing buffers like ``like``; the list
        is cached while ``params`` stays the same tensors (the usual case: every step), as
        hashing every parameter costs a measurable share of a large model's bookkeeping."""
        cached = self._kept_lists.get(id(store))
        if (
            cached is not None
            and cached[0] is store
            and len(cached[1]) == len(params)
            and all(map(operator.is_, cached[1], params))
        ):
            return cached[2]
        for p, v in zip(params, like if like is not None else params, strict=True):
            if p not in store:
                store[p] = torch.empty_like(v)
        buffers = [store[p] for p in params]
        self._kept_lists[id(store)] = (store, list(params), buffers)  # store: ids stay unique
        return buffers

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved weights back (exact, unlike w + eps - eps): trade storage back, or copy.

        Afterwards ``.grad`` holds what the base optimizer must apply; variants that combine
        gradients (GSAM, LookSAM) do so here, once per ``first_step``.
        """
        if self._perturbed:
            backup = self._kept(self._backup, self._perturbed)
            if self._swapped:
                trade_storage(self._perturbed, backup)
            else:
                copy_all(self._perturbed, backup)
        self._perturbed, self._swapped = [], False
        if self._pending_combine:
            self._pending_combine = False
            self._combine_gradients(self._did_perturb)

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore w and let the base optimizer apply the gradient taken at w + eps."""
        self._check_no_second_pass()
        self.restore()
        self.base_optimizer.step()
        # What torch's LR schedulers read as "optimizer.step() was called": without it a
        # scheduler attached to this object warns that it stepped first (davda54/sam#28).
        self._opt_called = True
        if zero_grad:
            self.zero_grad()

    def _check_no_second_pass(self) -> None:
        """After a skipped ascent the gradient at w is the one to apply; davda54/sam's loop
        runs a second forward-backward anyway, which would add the gradient at w once more
        (a changed update, silently). Refuse it: a backward changes ``.grad`` in place (its
        version counter) or replaces it."""
        kept, self._kept_grads = self._kept_grads, []
        changed = any(
            p.grad is not grad or grad._version != version
            for p, (grad, version) in zip(self._step_params, kept, strict=False)
        )
        if changed:
            raise RuntimeError(
                f"{type(self).__name__}.first_step returned False (no ascent on this step), "
                "but the gradients changed before second_step: run the second forward-backward "
                "only when first_step returns True, e.g. `if optimizer.first_step(zero_grad=True):"
                " loss_fn(model(x), y).backward()`"
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Full step; the gradient at w must already be in ``.grad``.

        ``closure`` recomputes loss and gradients at the current weights (the second pass,
        and the extra ascent passes). Returns the loss at w + eps, or None on the steps a
        periodic variant takes without perturbation.
        """
        if closure is None:
            raise RuntimeError("SAM.step needs a closure that recomputes loss and gradients")
        loss = None
        if self.first_step(zero_grad=True, ascent_closure=closure):
            with torch.enable_grad():
                loss = closure()
        self.second_step()
        return loss

    # ----------------------------------------------------------------------------------
    # State: the base optimizer's, so momentum buffers survive a resume
    # ----------------------------------------------------------------------------------
    def _all_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _buffers_to_state(self, buffers: dict[torch.Tensor, torch.Tensor]) -> dict[int, Any]:
        """Parameter-keyed buffers as {index in the groups: tensor}, like optimizer state
        (whole tensors: FSDP shards are gathered, so every rank must call)."""
        return {i: full(buffers[p]) for i, p in enumerate(self._all_params()) if p in buffers}

    def _buffers_from_state(self, state: dict[int, torch.Tensor]) -> dict:
        params = self._all_params()
        return {params[int(i)]: laid_out_like(t, params[int(i)]) for i, t in state.items()}

    def state_dict(self) -> dict[str, Any]:
        state = self.base_optimizer.state_dict()
        extra = self._extra_state()
        if extra:
            state["sam"] = extra
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("sam", None)
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        if extra:
            self._load_extra_state(extra)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not hasattr(self, "base_optimizer"):  # called by Optimizer.__init__
            super().add_param_group(param_group)
            return
        for key in _SAM_GROUP_KEYS:
            param_group.setdefault(key, self.defaults[key])
        self.base_optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_optimizer!r})"
