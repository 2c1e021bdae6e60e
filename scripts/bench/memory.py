"""Section 3: the bytes SAM holds beyond the base optimizer's state."""

from __future__ import annotations

import gc
from typing import Any

import torch
from torch import nn

from sam_train.sam import SAM

from .options import Options
from .timing import log
from .workloads import Workload, bench_run, compose, make_batch


def tensors_held(root: Any, skip: tuple[Any, ...] = ()) -> dict[tuple[str, int], torch.Tensor]:
    """Every tensor storage reachable from ``root`` through containers and attributes.

    Keys identify storages (device, address), so views and repeated references count once;
    the value is one tensor on that storage. Objects in ``skip`` are not entered.
    """
    skip_ids = {id(obj) for obj in skip}
    found: dict[tuple[str, int], torch.Tensor] = {}
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip_ids:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.setdefault((str(obj.device), obj.untyped_storage().data_ptr()), obj)
            if obj.grad is not None:
                stack.append(obj.grad)
        elif isinstance(obj, dict):
            stack.extend(obj.keys())
            stack.extend(obj.values())
        elif isinstance(obj, (list, tuple, set, frozenset)):
            stack.extend(obj)
        elif hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
    return found


def _nbytes(tensors: dict[Any, torch.Tensor]) -> int:
    return sum(t.untyped_storage().nbytes() for t in tensors.values())


def sam_extra_bytes(optimizer: SAM, model: nn.Module) -> dict[str, Any]:
    """Bytes the SAM object keeps beyond the parameters, their gradients and the base state.

    Split into tensors shaped like a parameter (copies of weights) and anything else.
    """
    base = optimizer.base_optimizer
    base_state = tensors_held(list(base.state.values()))  # the keys are the parameters
    shared = {**tensors_held(list(model.parameters())), **base_state}
    held = tensors_held(optimizer, skip=(base,))
    extra = {key: t for key, t in held.items() if key not in shared}
    shapes = [tuple(p.shape) for p in model.parameters()]
    copies = {}
    for key, tensor in extra.items():
        if tuple(tensor.shape) in shapes:
            shapes.remove(tuple(tensor.shape))
            copies[key] = tensor
    others = [t for key, t in extra.items() if key not in copies]
    return {
        "sam_extra_bytes": _nbytes(extra),
        "sam_weight_copy_bytes": _nbytes(copies),
        "sam_other_bytes": sum(t.untyped_storage().nbytes() for t in others),
        "sam_other_tensors": [
            f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in others
        ],
        "base_state_bytes": _nbytes(base_state),
    }


def bench_memory(opts: Options) -> list[dict[str, Any]]:
    """What SAM keeps between steps, measured on the objects after two training steps."""
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        run = bench_run(compose(opts.run_overrides(work)))
        model, step = run.model, run.step
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        for _ in range(2):
            step(images, targets)
        held = sam_extra_bytes(run.optimizer, model)
        # The step's copies of the norm-layer statistics (not the model's buffers themselves)
        guards = tensors_held([step._stats_guard, step._step_stats])
        buffers = tensors_held(list(model.buffers()))
        snapshots = {key: t for key, t in guards.items() if key not in buffers}
        row = {
            "workload": work.label,
            "key": key,
            "param_bytes": param_bytes,
            **held,
            "sam_extra_over_params": held["sam_extra_bytes"] / param_bytes,
            "sam_weight_copies_over_params": held["sam_weight_copy_bytes"] / param_bytes,
            # frozen for the second pass, and put back when a step is skipped (non-finite
            # gradient): a snapshot, and the buffers gathered to select on them
            "running_stats_snapshot_bytes": _nbytes(snapshots),
        }
        if opts.device.type == "cuda":
            row.update(_cuda_memory(opts, work, images, targets))
        results.append(row)
        log(f"memory {work.label}: SAM extra {row['sam_extra_over_params']:.4f}x params")
    return results


def _cuda_memory(
    opts: Options, work: Workload, images: torch.Tensor, targets: torch.Tensor
) -> dict[str, int]:
    """The allocator's view on CUDA: bytes held after a step and the step's peak."""
    out = {}
    for name, extra in (("base", ["sam=none"]), ("sam", [])):
        gc.collect()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated(opts.device)
        run = bench_run(compose([*opts.run_overrides(work), *extra]))
        run.step(images, targets)
        torch.cuda.synchronize(opts.device)
        torch.cuda.reset_peak_memory_stats(opts.device)
        run.step(images, targets)
        torch.cuda.synchronize(opts.device)
        out[f"cuda_{name}_held_bytes"] = torch.cuda.memory_allocated(opts.device) - start
        out[f"cuda_{name}_peak_bytes"] = torch.cuda.max_memory_allocated(opts.device) - start
        del run
    out["cuda_sam_extra_held_bytes"] = out["cuda_sam_held_bytes"] - out["cuda_base_held_bytes"]
    return out
