"""Checks that need two processes; run by tests/test_distributed.py as

    torchrun --nproc_per_node=2 tests/ddp_worker.py

Every check runs on both ranks (gloo, CPU). Reference results come from plain autograd on
one process (rank 0, no collective) and are compared with what the SAM step does under DDP.
Rank 0 prints one ``RESULT {json}`` line with the measured communication counts. Any failed
check raises, so the worker exits non-zero and torchrun reports it.
"""

from __future__ import annotations

import copy
import functools
import json

import torch
import torch.distributed as dist
from sam_reference import (
    CPU,
    GLOBAL_BATCH,
    LR,
    MOMENTUM,
    RHO,
    batches,
    bn_mlp,
    close,
    mlp,
    reference_sam,
    sam_step,
    sgd_step,
    train,
    weights,
)
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.utils.data import DataLoader, TensorDataset

from sam_train.data.samplers import ShardSampler
from sam_train.sam import SAM
from sam_train.step import SAMStep, evaluate
from sam_train.strategy import DDPStrategy, process_group


@functools.cache
def strategy() -> DDPStrategy:
    """This worker's strategy, as ``build.build_strategy`` makes it under torchrun."""
    return DDPStrategy(process_group.init_distributed("cpu"), CPU)


def my_half(x: torch.Tensor) -> torch.Tensor:
    half = len(x) // dist.get_world_size()
    return x[dist.get_rank() * half : (dist.get_rank() + 1) * half]


def ddp_step(model: nn.Module, **kwargs) -> SAMStep:
    """The SAM step on the DDP wrapper that build.py makes."""
    return sam_step(strategy().wrap(model), strategy=strategy(), **kwargs)


def same_on_all_ranks(tensors: list[torch.Tensor]) -> bool:
    flat = torch.cat([t.reshape(-1) for t in tensors])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    return all(torch.equal(g, gathered[0]) for g in gathered)


# ---------------------------------------------------------------------------- checks
def check_perturbation_modes() -> None:
    """sync_perturbation: two halves == one process on the batch; default: per-replica eps."""
    data = batches()
    synced = ddp_step(mlp(), sync_perturbation=True)
    train(synced, data, my_half)
    per_replica = ddp_step(mlp())
    train(per_replica, data, my_half)
    assert same_on_all_ranks(weights(synced.model)) and same_on_all_ranks(
        weights(per_replica.model)
    )
    if dist.get_rank() == 0:
        one_process = sam_step(mlp())
        train(one_process, data)
        assert close(weights(synced.model), weights(one_process.model)), "sync != one process"
        assert close(weights(synced.model), reference_sam(data, parts=1))
        per_half = reference_sam(data, parts=2)
        assert close(weights(per_replica.model), per_half), "default != per-replica eps"
        gap = max(
            (p - q).abs().max().item()
            for p, q in zip(weights(per_replica.model), weights(synced.model), strict=True)
        )
        assert gap > 1e-3, f"per-replica and synced eps should differ, max gap {gap}"
        # m-sharpness in one process reproduces per-replica DDP: m = per-device batch.
        m_half = sam_step(mlp(), sam_chunk=GLOBAL_BATCH // 2)
        train(m_half, data)
        assert close(weights(m_half.model), per_half)


def check_m_sharpness_under_ddp() -> None:
    """sam.m below the per-device batch: the last chunk's backward carries the earlier chunks'
    gradients through DDP's all-reduce; equal to one process with the same chunks."""
    data = batches()
    chunked = ddp_step(mlp(), sam_chunk=4, accum_steps=2)
    train(chunked, data, my_half)
    assert same_on_all_ranks(weights(chunked.model))
    if dist.get_rank() == 0:
        assert close(weights(chunked.model), reference_sam(data, parts=GLOBAL_BATCH // 4))


def count_communication(step: SAMStep, data, shard) -> dict[str, float]:
    """Gradient-bucket all-reduces (a DDP comm hook), buffer broadcasts and Python-level
    collectives per step, over the steps after DDP's first (it rebuilds buckets then)."""
    hook_calls: list[int] = []

    def counting_allreduce(state, bucket):  # no annotations: DDP checks them at runtime
        state.append(bucket.index())
        return default_hooks.allreduce_hook(None, bucket)

    ddp = step.model
    ddp.register_comm_hook(hook_calls, counting_allreduce)
    broadcasts = []
    original_broadcast = ddp._distributed_broadcast_coalesced
    ddp._distributed_broadcast_coalesced = lambda *a, **k: (
        broadcasts.append(1),
        original_broadcast(*a, **k),
    )[1]
    python_calls = []
    patched = {}
    for name in ("all_reduce", "broadcast", "all_gather", "reduce_scatter", "barrier"):
        patched[name] = getattr(dist, name)
        setattr(
            dist,
            name,
            (lambda fn: lambda *a, **k: (python_calls.append(1), fn(*a, **k))[1])(patched[name]),
        )
    step.model.train()
    try:
        step(shard(data[0][0]), shard(data[0][1]))
        hook_calls.clear(), broadcasts.clear(), python_calls.clear()
        for x, y in data[1:]:
            step(shard(x), shard(y))
    finally:
        for name, fn in patched.items():
            setattr(dist, name, fn)
    steps = len(data) - 1
    return {
        "allreduce_per_step": len(hook_calls) / steps,
        "buckets": len(set(hook_calls)),
        "buffer_broadcasts_per_step": len(broadcasts) / steps,
        # the hook's own dist.all_reduce calls are Python-level too: count the others
        "python_collectives_per_step": (len(python_calls) - len(hook_calls)) / steps,
    }


def check_communication_counts() -> dict[str, dict[str, float]]:
    from sam_train.models import create_model

    data = batches(n=3)
    counts: dict[str, dict[str, float]] = {}
    for name, kwargs in {
        "default": {},
        "sync_perturbation": {"sync_perturbation": True},
        "m=4": {"sam_chunk": 4},
        "accum=2": {"accum_steps": 2},
        "accum=2,sync_perturbation": {"accum_steps": 2, "sync_perturbation": True},
    }.items():
        counts[name] = count_communication(ddp_step(bn_mlp(), **kwargs), data, my_half)
    # The quickstart's CNN on 8x8 digits, as build.py wraps it.
    torch.manual_seed(0)
    cnn = create_model("digits_cnn", num_classes=10, in_chans=1)
    gen = torch.Generator().manual_seed(2)
    images = [
        (torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 10, (8,), generator=gen))
        for _ in range(3)
    ]
    for name, kwargs in {
        "digits_cnn default": {},
        "digits_cnn sync": {"sync_perturbation": True},
    }.items():
        counts[name] = count_communication(ddp_step(copy.deepcopy(cnn), **kwargs), images, my_half)
    # A 100-byte bucket cap gives several buckets: the count scales with them.
    for name, kwargs in {
        "small buckets default": {},
        "small buckets sync": {"sync_perturbation": True},
    }.items():
        ddp = nn.parallel.DistributedDataParallel(
            mlp(), forward_sync_buffers=False, bucket_cap_mb=1e-4
        )
        step = sam_step(ddp, strategy=strategy(), **kwargs)
        counts[name] = count_communication(step, data, my_half)
    # What DDP's default broadcast_buffers=True would add (DDPStrategy turns it off).
    for name, kwargs in {
        "broadcast_buffers default": {},
        "broadcast_buffers sync": {"sync_perturbation": True},
    }.items():
        ddp = nn.parallel.DistributedDataParallel(bn_mlp(), forward_sync_buffers=True)
        step = sam_step(ddp, strategy=strategy(), **kwargs)
        counts[name] = count_communication(step, data, my_half)

    # (synchronised passes per step, buffer broadcasts per step); buckets: 1 unless capped
    expected = {
        "default": (1, 0),
        "sync_perturbation": (2, 0),
        "m=4": (1, 0),
        "accum=2": (1, 0),
        "accum=2,sync_perturbation": (2, 0),
        "digits_cnn default": (1, 0),
        "digits_cnn sync": (2, 0),
        "small buckets default": (1, 0),
        "small buckets sync": (2, 0),
        "broadcast_buffers default": (1, 1),
        "broadcast_buffers sync": (2, 2),
    }
    for name, (passes, broadcasts) in expected.items():
        got = counts[name]
        assert got["buckets"] == 1 or name.startswith("small buckets"), (name, got)
        assert got["allreduce_per_step"] == passes * got["buckets"], (name, got)
        assert got["buffer_broadcasts_per_step"] == broadcasts, (name, got)
        assert got["python_collectives_per_step"] == 0, (name, got)
    assert counts["small buckets default"]["buckets"] > 1
    return counts


def bomb_first_pass(model: nn.Module, param: torch.Tensor, factor: float) -> None:
    """Multiply ``param``'s gradient by ``factor`` in the first forward-backward only."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    param.register_hook(lambda g: g * factor if calls[0] == 1 else g)


def check_fp16_overflow_skips_on_every_rank() -> None:
    """An overflow in one rank's first pass skips the step on both ranks.

    ``inf``: the usual fp16 overflow. ``1e30``: finite gradients whose norm overflows, so the
    perturbation is zero and the second pass is finite: only the NaN the step puts into
    the second loss carries that rank's decision through the all-reduce.
    """
    x, y = batches(n=1)[0]
    for factor in (float("inf"), 1e30):
        model = mlp()
        if dist.get_rank() == 1:
            bomb_first_pass(model, model[0].weight, factor)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        step = ddp_step(model, precision="fp16", scaler=scaler)
        before = weights(model)
        step.model.train()
        assert not step(my_half(x), my_half(y)).finite, factor  # on both ranks
        if dist.get_rank() == 1:
            assert not torch.isfinite(step.optimizer.last_grad_norm)
        assert all(torch.equal(p, q) for p, q in zip(before, weights(model), strict=True)), factor
        assert not step.base_optimizer.state, "a skipped step must not create momentum"
        assert scaler.get_scale() == 2.0**9, scaler.get_scale()
        assert step(my_half(x), my_half(y)).finite  # the next step is taken, on both ranks
        assert not close(before, weights(model), atol=0) and same_on_all_ranks(weights(model))


class SkipsAscent(SAM):
    """A variant that skips the perturbation on every step (first_step returns False)."""

    def first_step(self, zero_grad: bool = False, ascent_closure=None) -> bool:
        return False


def check_skipped_ascent_still_syncs() -> None:
    """Without a second pass the first (per-replica, unsynchronised) gradient is all-reduced."""
    data = batches()
    model = strategy().wrap(mlp())
    optimizer = SkipsAscent(model.parameters(), torch.optim.SGD, rho=RHO, lr=LR, momentum=MOMENTUM)
    step = SAMStep(model, optimizer, nn.CrossEntropyLoss(), CPU, strategy=strategy())
    train(step, data, my_half)
    assert same_on_all_ranks(weights(model))
    if dist.get_rank() == 0:
        plain = mlp()
        train(sgd_step(plain), data)
        assert close(weights(model), weights(plain))


def check_exact_global_evaluation() -> None:
    """Replicas' running statistics differ after training on their own shards; evaluation
    averages them and scores 13 examples split 7/6 (2 and 1 batches) exactly once."""
    data = batches()
    step = ddp_step(bn_mlp())
    train(step, data, my_half)
    module = strategy().unwrap(step.model)
    assert module is not step.model
    assert not same_on_all_ranks([module[1].running_mean]), "shards should give other stats"
    stats = [b.detach().clone() for b in module.buffers() if b.is_floating_point()]
    gathered = [[torch.empty_like(b) for _ in range(2)] for b in stats]
    for out, b in zip(gathered, stats, strict=True):
        dist.all_gather(out, b)
    gen = torch.Generator().manual_seed(3)
    test = TensorDataset(
        torch.randn(13, 6, generator=gen), torch.randint(0, 3, (13,), generator=gen)
    )
    sampler = ShardSampler(len(test), dist.get_rank(), dist.get_world_size())
    loader = DataLoader(test, batch_size=6, sampler=sampler)
    result = evaluate(step.model, loader, CPU, strategy=strategy())  # unwraps DDP itself
    assert result["count"] == 13, result
    assert same_on_all_ranks([b for b in module.buffers() if b.is_floating_point()])
    for b, out in zip(
        (b for b in module.buffers() if b.is_floating_point()), gathered, strict=True
    ):
        torch.testing.assert_close(b, (out[0].double() + out[1].double()).div(2).to(b.dtype))
    if dist.get_rank() == 0:
        expected = evaluate(copy.deepcopy(module), DataLoader(test, batch_size=13), CPU)
        assert result["acc1"] == expected["acc1"] and result["acc5"] == expected["acc5"]
        assert abs(result["loss"] - expected["loss"]) < 1e-6, (result, expected)


def main() -> None:
    torch.set_num_threads(1)
    info = strategy().info
    assert info.world_size == 2 and dist.get_backend() == "gloo"
    with process_group.exits_worker():
        check_perturbation_modes()
        check_m_sharpness_under_ddp()
        counts = check_communication_counts()
        check_fp16_overflow_skips_on_every_rank()
        check_skipped_ascent_still_syncs()
        check_exact_global_evaluation()
        if info.is_main:
            print("RESULT " + json.dumps(counts), flush=True)


if __name__ == "__main__":
    main()
