"""Sections 1 and 2: SAM / base step time, and the trainer against a minimal SAM loop."""

from __future__ import annotations

import copy
import functools
from typing import Any

from sam_train.profiling import dispatched_ops

from .options import Options
from .timing import head_to_head, log
from .workloads import MinimalSAMLoop, bench_run, compose, make_batch, train_step


# --------------------------------------------------------------------------------------
# 1. SAM / base step time
# --------------------------------------------------------------------------------------
def bench_ratio(opts: Options) -> list[dict[str, Any]]:
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        overrides = [*opts.run_overrides(work), f"trainer.amp={opts.precision}"]
        runs = {
            "base": bench_run(compose([*overrides, "sam=none"])),
            "sam": bench_run(compose(overrides)),
        }
        steps = {name: train_step(run, images, targets) for name, run in runs.items()}
        row = head_to_head(opts, steps, "sam", "base", "sam_over_base")
        for name in runs:
            row[f"{name}_images_per_s"] = work.batch_size / row[name]["median_s"]
        results.append({"workload": work.label, "key": key, **row})
        log(f"ratio {work.label}: SAM/base {results[-1]['sam_over_base']:.3f}")
    return results


# --------------------------------------------------------------------------------------
# 2. Trainer efficiency
# --------------------------------------------------------------------------------------
def bench_trainer(opts: Options) -> list[dict[str, Any]]:
    results = []
    for key in opts.selected:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        cfg = compose(opts.run_overrides(work))
        run = bench_run(cfg)
        minimal = MinimalSAMLoop(copy.deepcopy(run.model), cfg, opts.device, run.steps_per_epoch)
        steps = {
            "trainer": train_step(run, images, targets),
            "minimal": functools.partial(minimal.train_step, images, targets),
        }
        row = head_to_head(opts, steps, "minimal", "trainer", "trainer_efficiency")
        for name, step in steps.items():  # warm: the timing ran them
            row[name]["ops_per_step"] = sum(dispatched_ops(step).values())
        results.append({"workload": work.label, "key": key, **row})
        log(
            f"trainer {work.label}: efficiency {row['trainer_efficiency']:.3f}, ops per step "
            f"{row['trainer']['ops_per_step']} (minimal loop {row['minimal']['ops_per_step']})"
        )
    return results
