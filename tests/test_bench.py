"""scripts/bench's machinery on a tiny model: timing, memory accounting, DDP counting, and
that what it times is built by sam_train.build as training builds it."""

from __future__ import annotations

import json
import statistics
import sys
import time

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Subset

import sam_train.build
from sam_train.data.datasets import DatasetPair
from sam_train.strategy import DDPStrategy


def test_interleaving_rotates_the_order_and_calibrates_the_calls(bench, monkeypatch):
    """On a clock of the test's own (each call advances it by its config's cost, CPU time
    stands still), so a loaded machine cannot change how many calls fill a repetition."""
    clock = {"wall": 0.0}
    monkeypatch.setattr(time, "perf_counter", lambda: clock["wall"])
    monkeypatch.setattr(time, "process_time", lambda: 0.0)
    calls: list[str] = []

    def sleeper(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            clock["wall"] += seconds

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
    assert statistics.median(timings["b"]) == pytest.approx(0.01)
    assert statistics.median(timings["a"]) == pytest.approx(0.002)
    assert timings.cpu["b"] == [0.0] * 4  # wall and CPU time are read separately


@pytest.mark.slow
def test_quick_run_writes_consistent_json_and_markdown(bench, tmp_path):
    report = bench.main(
        [
            "--quick",
            "--workloads",
            "tiny",
            "--sections",
            "ratio,trainer,memory,hot_path,data",
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
    sections = ["ratio", "trainer", "memory", "hot_path", "data"]
    assert list(saved["meta"]["section_s"]) == sections  # where make bench's time goes
    # each rounded to 0.1 s: the sections fit in the whole run up to their rounding
    assert sum(saved["meta"]["section_s"].values()) <= saved["meta"]["wall_s"] + 0.05 * 6
    (ratio,) = saved["ratio"]
    assert ratio["sam_over_base"] == pytest.approx(
        ratio["sam"]["median_s"] / ratio["base"]["median_s"]
    )
    (trainer,) = saved["trainer"]
    assert trainer["trainer_efficiency"] == pytest.approx(
        trainer["minimal"]["median_s"] / trainer["trainer"]["median_s"]
    )
    (memory,) = saved["memory"]
    model = _tiny_run(bench).model
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    # SAM's backup is exactly one copy of the weights; beside it only the 0-dim grad norm.
    assert memory["param_bytes"] == memory["sam_weight_copy_bytes"] == param_bytes
    assert memory["sam_other_tensors"] == ["float32[]"]
    assert memory["base_state_bytes"] == param_bytes  # SGD momentum
    buffer_bytes = sum(b.numel() * b.element_size() for b in model.buffers())
    # SAMStep's copies: the second pass's frozen statistics, and for a skipped step's restore
    # a snapshot and the buffers gathered to select on them.
    assert memory["running_stats_snapshot_bytes"] == 3 * buffer_bytes
    (hot,) = saved["hot_path"]
    assert set(hot["host_reads_per_step"].values()) == {0}
    assert hot["param_bytes"] == hot["sam_backup_bytes"] == param_bytes
    assert 0 < hot["sam_temporary_bytes"] < param_bytes / 10  # the norms, nothing sized like w
    params = list(model.parameters())
    assert hot["param_tensors"] == len(params)
    # the largest temporary is the per-tensor norms' vector, smaller than any weight matrix
    assert 0 < hot["sam_largest_temporary_bytes"] <= 4 * len(params)
    assert hot["sam_largest_temporary_bytes"] < max(p.numel() * p.element_size() for p in params)
    assert hot["mask_copy_bytes_foreach"] == 2 * param_bytes  # weights and momentum
    (data,) = saved["data"]
    assert data["dataset"] == "digits" and data["num_workers"] == 0
    assert data["loaders"]["dataloader"]["images_per_s"] > 0
    assert data["reseeds_per_example"] == 0 and data["loader_over_bare_loop_cpu"] > 0
    table = (tmp_path / "bench.md").read_text()
    assert "| measure | workload | measured | target | met |" in table
    assert " s in all (ratio " in table.splitlines()[0]
    for measure in (
        "SAM step / base step",
        "trainer efficiency",
        "SAM extra memory",
        "host reads per step",
        "SAM peak extra bytes",
    ):
        assert f"| {measure}" in table
    assert report["ratio"] == saved["ratio"]


def _tiny_run(bench, *extra: str):
    overrides = bench.run_overrides(bench.workloads(32)["tiny"], ["trainer.device=cpu"])
    return bench.bench_run(bench.compose([*overrides, *extra]))


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _measure_tiny(bench, **kwargs):
    work = bench.workloads(32)["tiny"]
    overrides = bench.run_overrides(work, ["trainer.device=cpu"])
    return bench.ddp_measure(work, overrides, torch.device("cpu"), warmup=1, steps=2, **kwargs)


def test_ddp_counts_one_reduction_per_bucket_unless_the_perturbation_is_synced(
    bench, process_group
):
    # ~2 KB buckets (DDPStrategy's bucket_cap_mb): several of them for the 7 KB of weights
    results = _measure_tiny(bench, bucket_cap_mb=0.002)
    default, synced = results["sam default"], results["sam sync_perturbation"]
    buckets = default["buckets"]
    assert buckets > 1
    assert default["allreduces_per_step"] == buckets == results["base optimizer"]["buckets"]
    assert default["allreduce_bytes_per_step"] == default["param_bytes"]
    assert synced["allreduces_per_step"] == 2 * buckets
    assert synced["allreduce_bytes_per_step"] == 2 * default["param_bytes"]
    # Training's wrap broadcasts no buffers before a forward (DDPStrategy averages them instead).
    for mode in results.values():
        assert mode["buffer_broadcasts_per_step"] == 0


def test_ddp_times_the_wrap_training_uses(bench, process_group, monkeypatch):
    wrapped: list[nn.Module] = []
    wrap = DDPStrategy.wrap

    def spy(self, model):
        wrapped.append(wrap(self, model))
        return wrapped[-1]

    monkeypatch.setattr(DDPStrategy, "wrap", spy)
    results = _measure_tiny(bench)
    assert len(wrapped) == len(bench.DDP_MODES)  # every mode's model came from DDPStrategy.wrap
    for ddp in wrapped:
        assert isinstance(ddp, nn.parallel.DistributedDataParallel)
        assert ddp.broadcast_buffers is False  # no per-forward buffer broadcast
    # The counter does see the broadcasts of a DDP that makes them (so the zeros above count).
    run = _tiny_run(bench)
    plain = nn.parallel.DistributedDataParallel(run.model)  # broadcast_buffers=True
    counter = bench.instrument_ddp(plain)
    run.step.model = plain
    run.step(*bench.make_batch(bench.workloads(32)["tiny"], torch.device("cpu")))
    assert counter.broadcasts > 0
    assert all(mode["buffer_broadcasts_per_step"] == 0 for mode in results.values())


def test_data_section_reads_what_build_data_returns(bench, tmp_path, monkeypatch):
    calls = []
    build_data = sam_train.build.build_data

    def fewer_images(cfg, strategy=None):
        pair = build_data(cfg, strategy)
        calls.append(cfg.dataset.name)
        return DatasetPair(Subset(pair.train, range(200)), pair.test, pair.num_classes)

    monkeypatch.setattr(sam_train.build, "build_data", fewer_images)
    args = ["--workloads", "tiny", "--sections", "data", "--reps", "1", "--min-rep-s", "0"]
    report = bench.main([*args, "--out", str(tmp_path)])
    (data,) = report["data"]
    assert data["train_images"] == 200  # the loaders timed read build_data's set
    assert calls == ["digits", "digits"]  # the loaders' data, and the training run's


@pytest.mark.slow
def test_graph_counts_build_every_variant_with_what_it_needs_and_none_breaks(bench):
    """The compile section builds every SAM variant from its own config group (bSAM with the
    base optimizer it needs: it failed there) and dynamo traces each without a graph break."""
    from sam_train.config.schema import SAM_VARIANTS

    cli = sys.modules["bench.main"]  # the package's ``main`` is the function
    opts = cli.make_options(cli.parse_args(["--quick", "--workloads", "tiny"]))
    rows = sys.modules["bench.compile"].graph_counts(opts, "tiny", steps=2)
    assert [row["variant"] for row in rows] == list(SAM_VARIANTS)
    assert {row["variant"]: row["graph_breaks"] for row in rows} == dict.fromkeys(SAM_VARIANTS, 0)
