"""Section 5: data loading against training."""

from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from typing import Any

import torch

from sam_train import build

from .options import Options
from .timing import log, median_ratio, summary, synchronize, time_interleaved
from .workloads import bench_run, compose, make_batch, train_step


def _epoch(loader, device: torch.device) -> Callable[[], None]:
    """One full pass over a loader; the clock starts before its workers get the indices."""

    def run() -> None:
        for _images, _targets in loader:
            pass
        synchronize(device)

    return run


def _bare_epoch(dataset, images: int) -> Callable[[], None]:
    """The same examples indexed in a plain loop: no sampler, seeding, collation or workers."""

    def run() -> None:
        for index in range(images):
            dataset[index]

    return run


def _reseeds_per_example(loader, batches: int = 2) -> float:
    """``torch.manual_seed`` calls per example loaded (0: the loader seeds its own generator;
    each call also seeds every accelerator backend)."""
    calls = [0]
    original = torch.manual_seed

    def counting(seed):
        calls[0] += 1
        return original(seed)

    torch.manual_seed = counting
    try:
        seen = 0
        for index, (images, _) in enumerate(loader):
            seen += len(images)
            if index + 1 == batches:
                break
    finally:
        torch.manual_seed = original
    return calls[0] / max(seen, 1)


def _against_bare_loop(row: dict[str, Any], times, loader) -> None:
    """Loader images per CPU-second over a bare loop's, at 0 workers (workers' CPU time is
    not this process's), and the reseeding count."""
    row["reseeds_per_example"] = _reseeds_per_example(loader)
    if row["num_workers"] == 0:
        row["loader_over_bare_loop_cpu"] = median_ratio(
            times.cpu["bare loop"], times.cpu["dataloader"]
        )


def bench_data(opts: Options) -> list[dict[str, Any]]:
    """Images/s of each loader alone (full epochs) and of SAM training, interleaved."""
    results = []
    for dataset in dict.fromkeys(opts.work[key].dataset for key in opts.selected):
        keys = [key for key in opts.selected if opts.work[key].dataset == dataset]
        # digits as the quickstart reads it (no loader workers)
        extra = ["experiment=quickstart"] if dataset == "digits" else []
        cfg = compose([*opts.run_overrides(opts.work[keys[0]]), *extra])
        strategy = build.run_strategy(cfg)
        data = build.build_data(cfg, strategy)
        batch_size = opts.work[keys[0]].batch_size
        kinds = ["dataloader", "gpu"] if dataset in ("cifar10", "cifar100") else ["dataloader"]
        configs: dict[str, Callable[[], Any]] = {}
        for kind in kinds:
            kind_cfg = copy.deepcopy(cfg)
            kind_cfg.dataset.loader = kind
            loaders = build.build_run_loaders(kind_cfg, data, strategy, batch_size, seed=0)
            configs[kind] = _epoch(loaders.train, opts.device)
            if kind == "dataloader":
                train_loader = loaders.train
        epoch_images = len(data.train) // batch_size * batch_size
        configs["bare loop"] = _bare_epoch(data.train, epoch_images)
        labels = {}
        for key in keys:
            work = opts.work[key]
            images, targets = make_batch(work, opts.device)
            run = bench_run(compose([*opts.run_overrides(work), *extra]))
            configs[work.label] = train_step(run, images, targets)
            labels[work.label] = work
        # A loader "call" is a full epoch, a training call one step; both alternate.
        times = time_interleaved(
            configs, device=opts.device, warmup=1, reps=max(3, (opts.reps + 1) // 2)
        )
        row: dict[str, Any] = {
            "dataset": dataset,
            "train_images": len(data.train),
            "batch_size": batch_size,
            "num_workers": train_loader.num_workers,
            "loaders": {
                kind: {
                    "images_per_s": epoch_images / statistics.median(times[kind]),
                    **summary(times[kind]),
                }
                for kind in kinds
            },
            "training": {},
        }
        _against_bare_loop(row, times, train_loader)
        loader_rate = row["loaders"]["dataloader"]["images_per_s"]
        for label, work in labels.items():
            rate = work.batch_size / statistics.median(times[label])
            row["training"][label] = {
                "images_per_s": rate,
                "loader_over_training": loader_rate / rate,
                **summary(times[label]),
            }
        results.append(row)
        log(f"data {dataset}: DataLoader {loader_rate:.0f} images/s")
    return results
