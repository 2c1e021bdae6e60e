"""What the training step costs beyond SAM itself, counted in dispatched ops (not timed).

On a small model every op costs microseconds of dispatch whatever its size, so the trainer's
efficiency against the simplest correct SAM loop (``scripts/bench``'s ``MinimalSAMLoop``) is
set by how many ops the step adds. Each op it adds is named below with the guarantee it buys;
the count fails when an overhead that was removed comes back (zero-filled accumulators,
slicing a batch that is not cut, ``isfinite``'s five kernels, a ``where`` per norm buffer, a
second gradient norm, ...), and the overhead must not grow with the model beyond SAM's
per-tensor storage trade (counted apart: ``PER_PARAMETER_OPS``).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from sam_train import build
from sam_train.profiling import dispatched_ops
from sam_train.strategy import SingleProcess

CPU = torch.device("cpu")

#: What SAMStep dispatches beyond the minimal loop, per step, in build.py's default
#: configuration (fp32, fused SGD, non-finite steps skipped, one chunk, one micro-batch).
EXTRA_OPS = {
    "top-1 hits for the train accuracy (argmax, eq, sum)": 3,
    "the loss summed over the batch (mul, against the minimal loop's detach and add_)": -1,
    "non-finite check of the applied gradient (zero the flag, GradScaler's check, as bool)": 3,
    "skipped steps counted on the device (add, mul, maximum)": 3,
    "running statistics put back if skipped (snapshot; gather, where per dtype, scatter)": 5,
    "running statistics frozen in the second pass (snapshot, restore)": 2,
    "SAM's radius per parameter group: the second group's (add, reciprocal, mul)": 3,
    "the minimal loop's multi-tensor move (mul, add_, sub_): SAM trades storage instead": -3,
    "the minimal loop's optimizer.zero_grad, twice (profiler scope enter and exit)": -4,
}
#: ... and per parameter tensor: SAM's storage trade with its backup (``sam/sam.py``:
#: ``_swap_in`` computes w + eps tensor by tensor, mul_ and add, and ``trade_storage`` reads
#: ``.data`` four times a step, a detach each) instead of a few multi-tensor ops.
PER_PARAMETER_OPS = 6


def _ops_per_step(step) -> int:
    for _ in range(2):  # lazy optimizer state
        step()
    return sum(dispatched_ops(step).values())


def _overhead(bench, compose_cfg, model: nn.Module | None = None) -> tuple[int, dict, dict]:
    """(SAMStep's ops - the minimal loop's, both counts and the parameter tensors, SAMStep's
    ops by name) on the bench's tiny workload, or on ``model`` with the same configuration."""
    work = bench.workloads(32)["tiny"]
    cfg = compose_cfg(bench.run_overrides(work, ["trainer.device=cpu"]))
    torch.manual_seed(0)
    if model is None:
        run = bench.bench_run(cfg)
        model, trainer = run.model, bench.train_step(run, *bench.make_batch(work, CPU))
    else:
        optimizer = build.build_optimizer(model, cfg.optimizer, cfg.sam)
        step = build.build_step(cfg, model, optimizer, SingleProcess(device=CPU))
        images, targets = bench.make_batch(work, CPU)
        model.train()

        def trainer() -> None:
            step(images, targets)

    minimal = bench.MinimalSAMLoop(copy.deepcopy(model), cfg, CPU, steps_per_epoch=10)
    images, targets = bench.make_batch(work, CPU)
    counts = {
        "trainer": _ops_per_step(trainer),
        "minimal": _ops_per_step(lambda: minimal.train_step(images, targets)),
        "parameters": len(list(model.parameters())),
    }
    return counts["trainer"] - counts["minimal"], counts, dispatched_ops(trainer)


def test_the_step_adds_only_the_ops_its_guarantees_need(bench, compose_cfg):
    extra, counts, ops = _overhead(bench, compose_cfg)
    budget = sum(EXTRA_OPS.values()) + PER_PARAMETER_OPS * counts["parameters"]
    assert extra <= budget, (counts, ops)
    # the cuts, one by one (each was dispatched before)
    assert "aten.zeros.default" not in ops, "zero-filled accumulators"
    assert "aten.split.Tensor" not in ops and "aten.slice.Tensor" not in ops, "cutting"
    assert "aten.abs.default" not in ops, "torch.isfinite's decomposition"
    assert ops["aten.where.self_out"] == 2, "one where per dtype of the norm buffers"
    assert ops["aten._foreach_norm.Scalar"] == 1, "one gradient norm: SAM's"


def _cnn(blocks: int) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    for _ in range(blocks - 1):
        layers += [nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def test_the_step_overhead_does_not_grow_with_the_model(bench, compose_cfg):
    """Three norm layers or nine, 14 parameter tensors or 38: the same ops beyond the model's
    passes but SAM's per-tensor trade (no op per buffer, none per parameter in the step's own
    bookkeeping)."""
    small, few, _ = _overhead(bench, compose_cfg, _cnn(3))
    large, many, ops = _overhead(bench, compose_cfg, _cnn(9))
    grown = PER_PARAMETER_OPS * (many["parameters"] - few["parameters"])
    assert large - small == grown, (small, large, few, many, ops)
