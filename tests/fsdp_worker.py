"""Checks that need two FSDP2 processes; run by tests/test_fsdp.py as

    torchrun --nproc_per_node=2 tests/fsdp_worker.py RUN_ROOT

in ONE launch (each costs ~15 s of imports here). Every check runs on both ranks (gloo, CPU):

* the SAM step under FSDP (two halves of each batch) equals one process on the whole batch
  for SAM, ASAM and GSAM (and the variants whose update is deterministic), with parameters,
  gradients, momentum and SAM's backup sharded (local shards smaller than the parameters);
* norm-layer statistics come from the first pass only, and the weights are restored
  exactly before the base step;
* a real training run (``sam_train.train.train``) crashed after a mid-epoch checkpoint and
  resumed ends bit-identical to the uninterrupted run, and its checkpoints have the
  single-process layout.

Rank 0 prints ``RESULT {json}``; any failed check raises, so torchrun reports it.
"""

from __future__ import annotations

import copy
import functools
import json
import shutil
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from sam_reference import CPU, RHO, batches, bn_mlp, close, mlp, sam_step, train
from torch import nn

from sam_train.sam import GSAM, SAM, VARIANTS
from sam_train.sam.sharded import full, local
from sam_train.step import SAMStep
from sam_train.strategy import FSDPStrategy, process_group

#: name -> (variant class, its keyword arguments); all deterministic, so 2 ranks == 1 process
CASES = {
    "sam": (SAM, {}),
    "asam": (SAM, {"adaptive": True}),
    "gsam": (GSAM, {"alpha": 0.3}),
    "looksam": (VARIANTS["looksam"], {"k": 2}),  # per tensor
    "looksam all weights": (VARIANTS["looksam"], {"k": 2, "per_tensor": False}),
    "interval": (VARIANTS["interval"], {"k": 2}),
    "fsam": (VARIANTS["fsam"], {}),
    "p=inf": (SAM, {"p": float("inf")}),
    "inner_steps=2": (SAM, {"inner_steps": 2}),
    # ESAM's tensors drawn alike on both ranks (the seed), their gradients computed and dropped
    "perturb_fraction=0.5": (SAM, {"perturb_fraction": 0.5, "seed": 3}),
    "msam": (VARIANTS["msam"], {}),
    "rst": (VARIANTS["rst"], {"seed": 3}),
    "aesam": (VARIANTS["aesam"], {"threshold_start": 0.0, "threshold_end": 0.0}),
    "wsam": (VARIANTS["wsam"], {}),
}


@functools.cache
def strategy() -> FSDPStrategy:
    # Linear layers as units: three FSDP units with uneven shards (16 rows over 2 ranks is
    # even, 3 is not), so reductions must cover padded shards correctly.
    return FSDPStrategy(process_group.init_distributed("cpu"), CPU, wrap_classes=["Linear"])


def my_half(x: torch.Tensor) -> torch.Tensor:
    half = len(x) // dist.get_world_size()
    return x[dist.get_rank() * half : (dist.get_rank() + 1) * half]


def make_step(model: nn.Module, variant: type[SAM], kwargs: dict, **step_kwargs) -> SAMStep:
    return sam_step(model, variant, kwargs, **step_kwargs)


def full_weights(model: nn.Module) -> list[torch.Tensor]:
    return [full(p.detach()) for p in model.parameters()]


def check_matches_one_process() -> dict[str, float]:
    """Two FSDP ranks on halves == one process on the whole batch, per variant."""
    data = batches(n=4)
    gaps = {}
    for name, (variant, kwargs) in CASES.items():
        sharded = strategy().shard(mlp())
        step = make_step(sharded, variant, kwargs, strategy=strategy(), sync_perturbation=True)
        train(step, data, my_half)
        alone = make_step(mlp(), variant, kwargs)
        train(alone, data)
        got, want = full_weights(sharded), [p.detach() for p in alone.model.parameters()]
        gaps[name] = max((a - b).abs().max().item() for a, b in zip(got, want, strict=True))
        assert close(got, want, atol=1e-5), (name, gaps[name])
        assert not close(got, [p.detach() for p in mlp().parameters()], atol=1e-3), name
    return gaps


def check_sharded_state() -> dict[str, int]:
    """Each rank holds about half of the parameters, gradients, momentum and SAM's backup."""
    model = strategy().shard(mlp())
    step = make_step(model, SAM, {}, strategy=strategy(), sync_perturbation=True)
    x, y = batches(n=1)[0]
    model.train()
    step.optimizer.zero_grad()
    nn.functional.cross_entropy(model(my_half(x)), my_half(y)).backward()
    grads = sum(local(p.grad).numel() for p in model.parameters())
    step.optimizer.zero_grad()
    step(my_half(x), my_half(y))
    total = sum(p.numel() for p in model.parameters())
    counts = {
        "params_total": total,
        "params_local": sum(local(p).numel() for p in model.parameters()),
        "grads_local": grads,
        "momentum_local": sum(
            local(s["momentum_buffer"]).numel() for s in step.base_optimizer.state.values()
        ),
        "backup_local": sum(local(b).numel() for b in step.optimizer._backup.values()),
    }
    for key in ("params_local", "grads_local", "momentum_local", "backup_local"):
        assert counts[key] < 0.6 * total, counts
    return counts


def check_two_pass_invariants() -> None:
    """BatchNorm statistics from the first pass only; w restored before the base step."""
    plain = bn_mlp()
    model = strategy().shard(copy.deepcopy(plain))
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=RHO, lr=0.0)  # lr 0: w unchanged
    step = SAMStep(model, optimizer, nn.CrossEntropyLoss(), CPU, strategy=strategy())
    x, y = batches(n=1)[0]
    before = full_weights(model)
    model.train()
    step(my_half(x), my_half(y))
    plain.train()
    plain(my_half(x))  # one forward at w: the statistics the step must leave
    bn = dict(model.named_buffers())
    for name, want in plain.named_buffers():
        assert torch.equal(bn[name], want), name
    assert all(torch.equal(a, b) for a, b in zip(before, full_weights(model), strict=True))


def check_resume_is_exact(root: Path) -> dict[str, float]:
    """A crash after a mid-epoch checkpoint, resumed, ends where the uninterrupted run ends."""
    import time

    from conftest import compose_config

    import sam_train.train as train_module
    from sam_train.callbacks import Callback
    from sam_train.config import adjust, validate

    class CrashAt(Callback):
        def on_train_step_end(self, trainer, state, output) -> None:
            if state.global_step == 13:
                raise RuntimeError("simulated crash")

    def run(folder: str, extra: list[str]) -> None:
        cfg = compose_config(
            [
                "experiment=quickstart",
                "trainer.epochs=1",
                "scheduler.warmup_epochs=0",
                "trainer.strategy=fsdp",
                "model.kwargs.drop_rate=0.2",
                "checkpoint.every_n_steps=5",
                "logger=none",
                *extra,
            ]
        )
        validate(cfg)
        adjust(cfg)
        train_module.train(cfg, root / folder)

    seconds = {}
    started = time.perf_counter()
    run("whole", [])
    seconds["whole_run_s"] = time.perf_counter() - started
    original = train_module.build_callbacks
    train_module.build_callbacks = lambda *a, **k: [*original(*a, **k), CrashAt()]
    try:
        run("crashed", [])
    except RuntimeError as err:
        assert "simulated crash" in str(err)
        if dist.get_rank() == 0:  # for test_fsdp.py to resume in one process
            shutil.copy(root / "crashed/checkpoints/last.pt", root / "fsdp_step10.pt")
    else:
        raise AssertionError("the injected crash did not happen")
    finally:
        train_module.build_callbacks = original
    run("crashed", ["resume=auto"])
    dist.barrier()  # rank 0 writes the last checkpoint after the others have returned
    if dist.get_rank():
        return seconds
    whole = torch.load(root / "whole/checkpoints/last.pt", weights_only=False)
    resumed = torch.load(root / "crashed/checkpoints/last.pt", weights_only=False)
    assert whole["global_step"] == resumed["global_step"] == 21
    for key, value in whole["model"].items():
        assert type(value) is torch.Tensor and torch.equal(value, resumed["model"][key]), key
    for index, slot in whole["optimizer"]["state"].items():
        assert torch.equal(
            slot["momentum_buffer"], resumed["optimizer"]["state"][index]["momentum_buffer"]
        ), index
    assert all(isinstance(index, int) for index in whole["optimizer"]["state"])  # 1-process
    return seconds


def main() -> None:
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    info = strategy().info
    assert info.world_size == 2 and dist.get_backend() == "gloo"
    with process_group.exits_worker():
        result = {"gaps": check_matches_one_process(), "local": check_sharded_state()}
        check_two_pass_invariants()
        result.update(check_resume_is_exact(root))
        if info.is_main:
            print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
