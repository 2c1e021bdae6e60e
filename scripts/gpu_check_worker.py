"""One torchrun process of ``scripts/gpu_check.py``: the SAM step under DDP and under FSDP2
in a real process group (NCCL on CUDA, gloo on the CPU), losses finite, weights restored.

    torchrun --standalone --nproc_per_node=1 scripts/gpu_check_worker.py DEVICE CIFAR_ROOT
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench

from sam_train import build
from sam_train.config import register_configs
from sam_train.sam.sharded import full
from sam_train.strategy import DDPStrategy, DistInfo, FSDPStrategy, process_group


def main() -> None:
    device_type, cifar = sys.argv[1], sys.argv[2]
    dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    if device_type == "cuda":
        torch.cuda.set_device(0)
    device = torch.device("cuda", 0) if device_type == "cuda" else torch.device("cpu")
    info = DistInfo(rank=0, local_rank=0, world_size=dist.get_world_size())
    with process_group.exits_worker():
        register_configs()
        notes = []
        for kind, strategy in (
            ("ddp", DDPStrategy(info, device)),
            ("fsdp", FSDPStrategy(info, device)),
        ):
            cfg = bench.compose(
                [
                    "dataset=cifar10",
                    f"dataset.root={cifar}",
                    "dataset.download=false",
                    "dataset.verify_checksums=false",
                    "model.name=wrn16_4",
                    "trainer.batch_size=8",
                    "trainer.num_workers=0",
                    f"trainer.device={device_type}",
                    f"trainer.strategy={kind}",
                ]
            )
            torch.manual_seed(0)
            run = build.build_run(cfg, strategy)
            images, targets = next(iter(run.loaders.train))
            before = [full(p.detach()) for p in run.model.parameters()]
            for g in run.step.param_groups:
                g["lr"] = 0.0
            run.train_model.train()
            assert run.step(images, targets).finite
            after = [full(p.detach()) for p in run.model.parameters()]
            assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True)), kind
            for g in run.step.param_groups:
                g["lr"] = 0.1
            out = run.step(images, targets)
            loss = out.loss_sum.item() / out.count
            assert out.finite and loss == loss, (kind, loss)
            notes.append(f"{kind} loss {loss:.3f}")
        print(f"OK {dist.get_backend()}: " + ", ".join(notes), flush=True)


if __name__ == "__main__":
    main()
