"""A few SAM steps on every device path, with SAM's invariants asserted; one summary table.

    scripts/gpu_check.sh                  # on a GPU machine (under 8 minutes on one GPU)
    scripts/gpu_check.sh --device cpu     # the dry run CI keeps alive (the paths a CPU has)

Each check builds its run through ``sam_train.build`` from the config training composes
(synthetic CIFAR-10 in torchvision's format, or a tiny ImageFolder) and takes a few steps:

* every loss is finite;
* one step at learning rate 0 leaves every weight bit-identical (SAM's backup is copied
  back exactly; nothing of w + eps survives the step);
* after that step the norm-layer running statistics equal one forward at w on the same
  batch (first pass only; the second pass at w + eps left them alone).

Paths: fp32, bf16 autocast, fp16 with GradScaler (and an injected overflow that must skip
the step), channels_last, torch.compile, ``dataset.loader=gpu``, the pinned-memory
DataLoader, an ImageFolder, every SAM variant and option, EMA when the config has
``ema.decay``; then one torchrun process (NCCL on a GPU, gloo on the CPU) running the step
under DDP and under FSDP2; then ``python -m scripts.bench --quick``, whose ``hot_path``
section reports host reads per step and SAM's peak extra bytes. A path the device lacks is
reported "skip" with the reason; any failure makes the exit status 1.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import bench  # noqa: E402  (the benchmarks, scripts/bench/)

from sam_train import build  # noqa: E402
from sam_train.config import adjust, register_configs, validate  # noqa: E402
from sam_train.data.synthetic import write_cifar, write_image_folder  # noqa: E402
from sam_train.errors import ArgumentParser  # noqa: E402

#: ordinary steps after the checked one (fewer in the CPU dry run: CPU fp16 is slow)
STEPS = {"cuda": 3, "cpu": 2}
#: batch size; smaller in the CPU dry run (its two emulated fp16 rows took 11.9 s of CPU
#: time at 16, 6.1 s at 8), still two chunks for ``sam.m=4``
BATCH = {"cuda": 16, "cpu": 8}
#: the fp16 rows' batch: emulated float16 on a CPU takes 1.1 s of CPU per SAM step at 8
FP16 = {"cuda": ["trainer.amp=fp16"], "cpu": ["trainer.amp=fp16", "trainer.batch_size=4"]}


class Skip(Exception):
    """This device has no such path."""


# ---------------------------------------------------------------------------- the invariants
def _step_once_checked(run, images, targets, steps: int) -> float:
    """One step at lr 0 (weights must not move; statistics must be the first pass's: one
    forward per m-chunk), then ``steps`` ordinary ones; returns the last loss."""
    model = run.step.model
    reference = copy.deepcopy(run.model)
    before = [p.detach().clone() for p in run.model.parameters()]
    lrs = [g["lr"] for g in run.step.param_groups]
    for g in run.step.param_groups:
        g["lr"] = 0.0
    rng = torch.get_rng_state(), (torch.cuda.get_rng_state() if run.device.type == "cuda" else None)
    model.train()
    output = run.step(images, targets)
    for g, lr in zip(run.step.param_groups, lrs, strict=True):
        g["lr"] = lr
    assert output.finite, "the lr-0 step was skipped"
    after = [p.detach() for p in run.model.parameters()]
    moved = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if not torch.equal(a, b)]
    assert not moved, f"weights changed by a step at lr 0 (SAM restore not exact): {moved[:3]}"
    torch.set_rng_state(rng[0])
    if rng[1] is not None:
        torch.cuda.set_rng_state(rng[1])
    reference.train()
    with torch.no_grad(), run.precision.autocast():
        x = images.to(run.device)
        if run.step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for chunk in x.split(run.step.sam_chunk or len(x)):
            reference(chunk)
    want = dict(reference.named_buffers())
    for name, got in run.model.named_buffers():
        if got.is_floating_point():
            torch.testing.assert_close(got, want[name], rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(got, want[name]), name
    loss = float("nan")
    for _ in range(steps):
        out = run.step(images, targets)
        loss = out.loss_sum.item() / out.count
        assert out.finite and torch.isfinite(torch.tensor(loss)), f"loss {loss}"
    return loss


def _batch(run):
    images, targets = next(iter(run.loaders.train))
    return images, targets


def train_check(overrides: list[str], *, needs_cuda: bool = False) -> Callable[[dict], str]:
    def check(ctx: dict) -> str:
        if needs_cuda and ctx["device"] != "cuda":
            raise Skip("needs CUDA")
        cfg = bench.compose([*ctx["base"], *overrides])
        validate(cfg)
        adjust(cfg)
        torch.manual_seed(0)
        run = build.build_run(cfg, build.run_strategy(cfg))
        loss = _step_once_checked(run, *_batch(run), ctx["steps"])
        return f"loss {loss:.3f}"

    return check


def fp16_overflow(ctx: dict) -> str:
    """An inf in the first pass's gradient skips the step: weights and momentum unchanged,
    the scale halved; the next step is taken."""
    cfg = bench.compose([*ctx["base"], *FP16[ctx["device"]]])
    validate(cfg)
    torch.manual_seed(0)
    run = build.build_run(cfg, build.run_strategy(cfg))
    images, targets = _batch(run)
    first = next(p for p in run.model.parameters() if p.requires_grad)
    passes = [0]
    hook_pre = run.model.register_forward_pre_hook(lambda *_: passes.__setitem__(0, passes[0] + 1))
    hook = first.register_hook(lambda g: g * float("inf") if passes[0] == 1 else g)
    before = [p.detach().clone() for p in run.model.parameters()]
    scale = run.scaler.get_scale()
    run.train_model.train()
    out = run.step(images, targets)
    hook.remove(), hook_pre.remove()
    assert not out.finite, "an overflow did not skip the step"
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    assert not run.step.base_optimizer.state and run.scaler.get_scale() == scale / 2
    assert run.step(images, targets).finite
    return f"skipped, scale {scale:g} -> {scale / 2:g}, next step taken"


def ema_check(ctx: dict) -> str:
    from sam_train.config.schema import TrainConfig

    if "ema" not in TrainConfig.__dataclass_fields__:
        raise Skip("this sam-train has no ema.decay")
    return train_check(["ema.decay=0.99"])(ctx)


def imagefolder_check(ctx: dict) -> str:
    return train_check(
        [
            "dataset=imagenet",
            f"dataset.root={ctx['image_folder']}",
            "dataset.num_classes=3",
            "dataset.image_size=32",
            "trainer.batch_size=6",
        ]
    )(ctx)


def torchrun_check(ctx: dict) -> str:
    """One torchrun process (NCCL on CUDA, gloo on CPU): the step under DDP and FSDP2."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=1",
        str(Path(__file__).with_name("gpu_check_worker.py")),
        ctx["device"],
        ctx["cifar"],
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # a guard against a hang only: a loaded machine multiplies the 30 s it takes quiet
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
    if done.returncode:
        raise AssertionError((done.stdout + done.stderr)[-2000:])
    return next(x for x in done.stdout.splitlines() if x.startswith("OK ")).removeprefix("OK ")


def bench_check(ctx: dict) -> str:
    args = ["--quick", "--device", ctx["device"], "--out", str(Path(ctx["tmp"]) / "bench")]
    if ctx["device"] == "cpu":  # the wiring only: the quick bench takes minutes on a CPU
        args += ["--workloads", "tiny", "--sections", "ratio,memory,hot_path", "--reps", "1"]
        args += ["--min-rep-s", "0"]
    report = bench.main(args)
    reads = max(v for row in report["hot_path"] for v in row["host_reads_per_step"].values())
    peak = max(row["sam_peak_extra_over_params"] for row in report["hot_path"])
    if reads:
        raise AssertionError(f"{reads:g} host reads per step")
    return (
        f"bench {' '.join(args[:4])}: {report['meta']['wall_s']} s; host reads/step {reads:g}, "
        f"SAM peak extra {peak:.3f}x params"
    )


def checks(device: str, with_compile: bool) -> dict[str, Callable[[dict], str]]:
    """Path name -> check. The CUDA-only ones report skip elsewhere."""
    sam_variants = {
        "sam": [],
        "asam": ["sam.adaptive=true"],
        "gsam": ["sam=gsam"],
        "looksam": ["sam=looksam"],
        "interval": ["sam=interval"],
        "fsam": ["sam=fsam"],
        "p=inf": ["sam.p=inf"],
        "perturb_fraction=0.5": ["sam.perturb_fraction=0.5"],
        "inner_steps=2": ["sam.inner_steps=2"],
        "m=4 (m-sharpness)": ["sam.m=4"],
        "include_weight_decay": ["sam.include_weight_decay=true"],
    }
    paths: dict[str, Callable[[dict], str]] = {
        "fp32": train_check([]),
        "bf16 autocast": train_check(["trainer.amp=bf16"]),
        "fp16 GradScaler": train_check([*FP16[device], "sam.rho=0.05"]),
        "fp16 injected overflow": fp16_overflow,
        "channels_last": train_check(["trainer.channels_last=true"]),
        "dataset.loader=gpu": train_check(["dataset.loader=gpu"], needs_cuda=True),
        "pinned DataLoader, 2 workers": train_check(["trainer.num_workers=2"]),
        "ImageFolder": imagefolder_check,
        **{f"SAM variant {k}": train_check(v) for k, v in sam_variants.items()},
        "EMA": ema_check,
        "torchrun 1 process, DDP + FSDP": torchrun_check,
        "bench --quick": bench_check,
    }
    if device == "cuda" or with_compile:
        paths["torch.compile"] = train_check(["trainer.compile=true"])
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--compile", action="store_true", help="also torch.compile on the CPU")
    parser.add_argument("--only", default=None, help="comma-separated path names (substrings)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run with --device cpu for the dry run")
        return 2
    if args.device == "cpu":
        torch.set_num_threads(1)
    register_configs()
    rows: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        cifar = write_cifar(Path(tmp) / "cifar", "cifar10", (64, 32))
        image_folder = write_image_folder(Path(tmp) / "imagefolder")
        ctx = {
            "device": args.device,
            "steps": STEPS[args.device],
            "tmp": tmp,
            "cifar": str(cifar),
            "image_folder": str(image_folder),
            "base": [
                "dataset=cifar10",
                f"dataset.root={cifar}",
                "dataset.download=false",
                "dataset.verify_checksums=false",
                "model.name=cifar_resnet32" if args.device == "cuda" else "model.name=digits_cnn",
                "+model.kwargs.drop_rate=0.1",
                f"trainer.batch_size={BATCH[args.device]}",
                "trainer.num_workers=0",
                "trainer.epochs=1",
                "scheduler.warmup_epochs=0",
                f"trainer.device={args.device}",
            ],
        }
        for name, check in checks(args.device, args.compile).items():
            if args.only and not any(part in name for part in args.only.split(",")):
                continue
            rows.append(_run(name, check, ctx))
    return _report(rows)


def _run(name: str, check: Callable[[dict], str], ctx: dict) -> tuple[str, str, float, str]:
    started = time.perf_counter()
    try:
        status, note = "ok", check(ctx)
    except Skip as skip:
        status, note = "skip", str(skip)
    except Exception as err:  # every path is reported; the table says which failed
        traceback.print_exc()
        status, note = "FAIL", f"{type(err).__name__}: {str(err).splitlines()[0][:90]}"
    seconds = time.perf_counter() - started
    print(f"[gpu_check] {name}: {status} ({seconds:.1f} s) {note}", flush=True)
    return name, status, seconds, note


def _report(rows: list[tuple[str, str, float, str]]) -> int:
    print("\n| path | status | seconds | note |\n|---|---|---|---|")
    for name, status, seconds, note in rows:
        print(f"| {name} | {status} | {seconds:.1f} | {note} |")
    failed = [name for name, status, _, _ in rows if status == "FAIL"]
    total = sum(seconds for _, _, seconds, _ in rows)
    print(f"\n{len(rows)} paths, {len(failed)} failed, {total:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
