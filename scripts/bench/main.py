"""The command line: ``python -m scripts.bench --quick`` (``make bench``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sam_train import build
from sam_train.config import register_configs
from sam_train.data.synthetic import write_cifar
from sam_train.errors import ArgumentParser, SamTrainError
from sam_train.paths import exit_on_problems, expect_folder

from .compile import bench_compile
from .data import bench_data
from .ddp import bench_ddp
from .hot_path import bench_hot_path
from .memory import bench_memory
from .options import REPO, SECTIONS, TARGETS, Options
from .report import machine_info, markdown
from .sharding import bench_fsdp
from .steps import bench_ratio, bench_trainer
from .timing import log
from .workloads import compose, workloads


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(
        description="sam-train benchmarks (see the module docstring for what each measures)"
    )
    parser.add_argument("--quick", action="store_true", help="the `make bench` preset")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument(
        "--workloads", default="cnn_cifar,wrn16_4,cnn_digits", help="comma-separated"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (--quick on a CPU: 1)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="of the CIFAR workloads")
    parser.add_argument("--warmup", type=int, default=None, help="steps before timing")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions")
    parser.add_argument("--min-rep-s", type=float, default=None, help="seconds per repetition")
    parser.add_argument("--amp", default="none", choices=("none", "bf16", "fp16"))
    parser.add_argument("--data-images", type=int, default=5000, help="synthetic CIFAR images")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "bench")
    args = parser.parse_args(argv)
    exit_on_problems("bench", [expect_folder(args.out, "a folder for results", exists=False)])
    return args


def make_options(args: argparse.Namespace) -> Options:
    """What the command line asks for; sets torch's CPU threads."""
    device = build.resolve_device(args.device)
    on_gpu = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    elif args.quick and not on_gpu:
        # Multi-threaded CPU kernels stall whenever another process holds one of the cores
        # (each parallel region waits for its slowest thread), which on a shared machine
        # swamps what is measured; one thread keeps the quick run's ratios meaningful.
        torch.set_num_threads(1)
    work = workloads(args.batch_size or (128 if on_gpu else 32))
    selected = args.workloads.split(",")
    sections = args.sections.split(",")
    unknown = [n for n in selected if n not in work] + [n for n in sections if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"bench: unknown workload or section: {', '.join(unknown)}")
    quick = args.quick
    return Options(
        device=device,
        warmup=args.warmup if args.warmup is not None else (1 if quick else 3),
        reps=args.reps or (7 if quick else 15),
        min_rep_s=args.min_rep_s if args.min_rep_s is not None else (1.0 if quick else 2.0),
        precision=args.amp,
        work=work,
        selected=selected,
        data_images=args.data_images,
        ddp_steps=3 if quick else 10,
        # Compiling takes a minute or more per model on 2 CPU cores: one model when quick.
        compile_workloads=selected[:1] if quick and not on_gpu else selected,
        overrides=[f"trainer.device={device.type}"],
    )


RUNNERS: dict[str, Callable[[Options], list[dict[str, Any]]]] = {
    "ratio": bench_ratio,
    "trainer": bench_trainer,
    "memory": bench_memory,
    "hot_path": bench_hot_path,
    "ddp": bench_ddp,
    "fsdp": bench_fsdp,
    "data": bench_data,
    "compile": bench_compile,
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    try:
        opts = make_options(args)
    except SamTrainError as err:  # --device
        exit_on_problems("bench", [str(err)])
    register_configs()
    cfg = compose(opts.overrides)
    shown = argv if argv is not None else sys.argv[1:]
    report: dict[str, Any] = {
        "meta": {
            "command": " ".join(["python -m scripts.bench", *shown]),
            "machine": machine_info(opts.device),
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "warmup": opts.warmup,
            "reps": opts.reps,
            "min_rep_s": opts.min_rep_s,
            "precision": opts.precision,
            "config": f"optimizer {cfg.optimizer.name} lr {cfg.optimizer.lr}, sam rho "
            f"{cfg.sam.rho}, scheduler {cfg.scheduler.name}",
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
        "targets": TARGETS,
    }
    started = time.perf_counter()
    log(f"device {opts.device}, {torch.get_num_threads()} thread(s), workloads {opts.selected}")
    with tempfile.TemporaryDirectory() as tmp:
        if "fsdp" in args.sections.split(",") or any(
            opts.work[key].dataset == "cifar10" for key in opts.selected
        ):
            root = write_cifar(Path(tmp) / "cifar", "cifar10", (opts.data_images, 1000))
            opts.cifar_root = str(root)
        section_s = report["meta"]["section_s"] = {}
        for section in SECTIONS:
            if section in args.sections.split(","):
                section_started = time.perf_counter()
                report[section] = RUNNERS[section](opts)
                section_s[section] = round(time.perf_counter() - section_started, 1)
                write_json(report, args.out)  # a later section's failure keeps this one's
    report["meta"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    report["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
    write_json(report, args.out)
    table = markdown(report)
    (args.out / "bench.md").write_text(table)
    log(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'}")
    print(table)
    return report


def write_json(report: dict[str, Any], out: Path) -> None:
    """``bench.json`` as measured so far (replaced whole, so a reader never sees half)."""
    out.mkdir(parents=True, exist_ok=True)
    partial = out / "bench.json.partial"
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(out / "bench.json")


if __name__ == "__main__":
    main()
