"""sam-train benchmarks: what SAM costs beyond its two passes, and what the trainer costs.

Measured side by side in one run (ratios, since a shared machine drifts), each comparison
interleaved (A, B, A, B, ... with the order rotated every repetition) after a warm-up, and
reported as medians over repetitions:

1. ``ratio``    SAM step time / base-optimizer step time, same model and batch (floor ~2.0);
2. ``trainer``  a minimal two-pass SAM loop written here / sam-train's training step
                (``SAMStep`` and the schedule's update; 1.0 means the trainer adds nothing),
                and the ops each dispatches per step (a small model's overhead, counted);
3. ``memory``   bytes the SAM optimizer holds beyond the base optimizer's state, against the
                parameter bytes (found by walking the optimizer's references; on CUDA also the
                allocator's count);
4. ``ddp``      gradient all-reduces (DDP comm-hook calls, i.e. buckets) and bytes per step
                under two-process DDP (gloo on CPU), default vs ``sam.sync_perturbation=true``;
5. ``data``     data-loading throughput alone (images/s, the configured workers) against
                training throughput, per data set (digits; CIFAR-10 from synthetic images
                written in torchvision's on-disk format), and the device-resident loader;
6. ``fsdp``     per-rank bytes of parameters, gradients, optimizer state and SAM's backup,
                and the collectives per step, under DDP and under FSDP2 (two processes,
                gloo), for WRN-16-4 and a small ViT;
7. ``compile``  ``trainer.compile=true`` (torch.compile) against eager.

Every data set, model, optimizer, schedule, DDP wrap and step timed here is built by
``sam_train.build`` (``build_run``) from the config ``sam-train`` composes for the same
overrides, so a benchmark measures what training runs.

One module per section (``steps``, ``memory``, ``ddp``, ``sharding``, ``data``, ``hot_path``,
``compile``), beside the shared ``workloads``, ``timing`` and ``report``; ``main`` is the
command line. Usage, from the checkout::

    python -m scripts.bench --quick        # `make bench`: minutes on 2 CPU cores, 1 thread
    python -m scripts.bench                # all threads, more repetitions, compile everything
    python -m scripts.bench --sections ratio,memory --workloads wrn16_4
    python -m scripts.bench --batch-size 128 --amp bf16   # on a GPU machine (auto-detected)

Writes ``bench.json`` and ``bench.md`` into ``--out`` (default ``outputs/bench``). The machine
may be shared: the load average before and after is recorded next to the numbers, and each
ratio is also given from CPU time, which other processes do not inflate.
"""

from .ddp import DDP_MODES, ddp_measure, instrument_ddp
from .main import main
from .timing import Timings, median_ratio, time_interleaved
from .workloads import (
    MinimalSAMLoop,
    bench_run,
    compose,
    make_batch,
    run_overrides,
    train_step,
    workloads,
)

__all__ = [
    "DDP_MODES",
    "MinimalSAMLoop",
    "Timings",
    "bench_run",
    "compose",
    "ddp_measure",
    "instrument_ddp",
    "main",
    "make_batch",
    "median_ratio",
    "run_overrides",
    "time_interleaved",
    "train_step",
    "workloads",
]
