"""Section 7: torch.compile against eager."""

from __future__ import annotations

import time
from typing import Any

import torch

from sam_train.config.schema import VARIANT_OVERRIDES
from sam_train.sam import VARIANTS

from .options import Options
from .timing import head_to_head, log, synchronize
from .workloads import bench_run, compose, make_batch, train_step


def graph_counts(opts: Options, key: str, steps: int = 4) -> list[dict[str, Any]]:
    """Graph breaks and graphs compiled over the first ``steps`` steps of each SAM variant.

    Dynamo's own counters, with its ``eager`` backend: breaks and recompilations are decided
    while tracing, before any backend, so this needs no C++ compiler and takes seconds.
    """
    from torch._dynamo.utils import counters

    work = opts.work[key]
    images, targets = make_batch(work, opts.device)
    rows = []
    for variant in ("none", *VARIANTS):
        torch._dynamo.reset()
        counters.clear()
        needs = VARIANT_OVERRIDES.get(variant, ())  # e.g. bSAM: SGD without momentum or decay
        run = bench_run(compose([*opts.run_overrides(work), f"sam={variant}", *needs]))
        run.step.model = torch.compile(run.train_model, backend="eager")
        # SAF keeps outputs per example: its loader hands the step their indices
        with_indices = getattr(run.loaders.train.dataset, "dataset", None)
        indices = [torch.arange(len(targets))] if getattr(with_indices, "with_indices", 0) else []
        for _ in range(steps):
            run.step(images, targets, *indices)
        breaks = dict(counters["graph_break"])
        rows.append(
            {
                "workload": work.label,
                "variant": variant,
                "steps": steps,
                "graph_breaks": sum(breaks.values()),
                "break_reasons": {reason[:120]: n for reason, n in breaks.items()},
                "graphs": counters["stats"]["unique_graphs"],
                "frames": counters["frames"]["total"],
            }
        )
        log(
            f"compile {work.label} sam={variant}: {rows[-1]['graph_breaks']} graph breaks, "
            f"{rows[-1]['graphs']} graph(s) in {steps} steps"
        )
    torch._dynamo.reset()
    return rows


def bench_compile(opts: Options) -> list[dict[str, Any]]:
    """``trainer.compile=true``: the run's step through ``torch.compile(model)``, SAM steps;
    then the graph breaks and recompilations of every SAM variant."""
    results = graph_counts(opts, opts.compile_workloads[0])
    for key in opts.compile_workloads:
        work = opts.work[key]
        images, targets = make_batch(work, opts.device)
        overrides = opts.run_overrides(work)
        eager = bench_run(compose(overrides))
        compiled = bench_run(compose([*overrides, "trainer.compile=true"]))
        try:
            start = time.perf_counter()
            compiled.step(images, targets)  # compiles the forward and backward graphs
            synchronize(opts.device)
            compile_s = time.perf_counter() - start
        except Exception as err:  # no C++ compiler, unsupported platform, ...
            results.append({"workload": work.label, "key": key, "error": repr(err)[:300]})
            log(f"compile {work.label}: failed: {err!r}"[:200])
            continue
        steps = {
            "eager": train_step(eager, images, targets),
            "compiled": train_step(compiled, images, targets),
        }
        row = {"workload": work.label, "key": key, "compile_s": compile_s}
        row.update(head_to_head(opts, steps, "eager", "compiled", "speedup"))
        results.append(row)
        log(f"compile {work.label}: {row['speedup']:.2f}x eager (compiling took {compile_s:.0f} s)")
    return results
