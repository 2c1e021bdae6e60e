"""scripts/bench.py's machinery on a tiny model: timing, memory accounting, DDP counting."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
import time

import pytest
import torch
import torch.distributed as dist
from conftest import REPO


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "scripts" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    module.register_configs()
    return module


def test_interleaving_rotates_the_order_and_calibrates_the_calls(bench):
    calls: list[str] = []

    def sleeper(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            time.sleep(seconds)

        return run

    timings = bench.time_interleaved(
        {"a": sleeper("a", 0.002), "b": sleeper("b", 0.01)},
        device=torch.device("cpu"),
        warmup=1,
        reps=4,
        min_rep_s=0.03,
    )
    timed = calls[2:]  # after one warm-up call each
    per_rep = len(timed) // 4
    assert per_rep % 2 == 0 and per_rep // 2 >= 3  # the 10 ms config fills 30 ms
    firsts = [timed[rep * per_rep] for rep in range(4)]
    assert firsts == ["a", "b", "a", "b"]
    assert len(timings["a"]) == len(timings.cpu["b"]) == 4
    assert statistics.median(timings["b"]) > statistics.median(timings["a"]) >= 0.002
    assert statistics.median(timings.cpu["b"]) < 0.005  # sleeping is wall time only


@pytest.mark.slow
def test_quick_run_writes_consistent_json_and_markdown(bench, tmp_path):
    report = bench.main(
        [
            "--quick",
            "--workloads",
            "tiny",
            "--sections",
            "ratio,trainer,memory,data",
            "--reps",
            "2",
            "--min-rep-s",
            "0",
            "--out",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["meta"]["machine"]["threads"] == 1 and saved["meta"]["reps"] == 2
    (ratio,) = saved["ratio"]
    assert ratio["sam_over_base"] == pytest.approx(
        ratio["sam"]["median_s"] / ratio["base"]["median_s"]
    )
    (trainer,) = saved["trainer"]
    assert trainer["trainer_efficiency"] == pytest.approx(
        trainer["minimal"]["median_s"] / trainer["trainer"]["median_s"]
    )
    (memory,) = saved["memory"]
    model = bench.build_model(bench.workloads(32)["tiny"], torch.device("cpu"))
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # SAM's backup is exactly one copy of the weights; beside it only the 0-dim grad norm.
    assert memory["param_bytes"] == memory["sam_weight_copy_bytes"] == param_bytes
    assert memory["sam_other_tensors"] == ["float32[]"]
    assert memory["base_state_bytes"] == param_bytes  # SGD momentum
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    assert memory["running_stats_snapshot_bytes"] == buffer_bytes
    (data,) = saved["data"]
    assert data["dataset"] == "digits" and data["num_workers"] == 0
    assert data["loaders"]["dataloader"]["images_per_s"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| measure | workload | measured | target | met |" in table
    for measure in ("SAM step / base step", "trainer efficiency", "SAM extra memory"):
        assert f"| {measure}" in table
    assert report["ratio"] == saved["ratio"]


def test_ddp_counts_one_reduction_per_bucket_unless_the_perturbation_is_synced(bench, tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        results = bench.ddp_measure(
            bench.workloads(32)["tiny"],
            bench.compose(["trainer.device=cpu"]),
            torch.device("cpu"),
            warmup=1,
            steps=2,
            bucket_cap_mb=0.002,  # ~2 KB buckets: several of them for the 7 KB of weights
        )
    finally:
        dist.destroy_process_group()
    default, synced = results["sam default"], results["sam sync_perturbation"]
    buckets = default["buckets"]
    assert buckets > 1
    assert default["allreduces_per_step"] == buckets == results["base optimizer"]["buckets"]
    assert default["allreduce_bytes_per_step"] == default["param_bytes"]
    assert synced["allreduces_per_step"] == 2 * buckets
    assert synced["allreduce_bytes_per_step"] == 2 * default["param_bytes"]
    # DDP broadcasts buffers before each synced forward; the first pass runs in no_sync().
    assert default["buffer_broadcasts_per_step"] == 1
    assert synced["buffer_broadcasts_per_step"] == 2
