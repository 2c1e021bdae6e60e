"""The step's options in one process: accumulation, m-sharpness, clipping, fp16 and bf16,
channels_last, torch.compile, SyncBatchNorm; checked against hand-written SAM."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from sam_reference import (
    CPU,
    GLOBAL_BATCH,
    batches,
    bn_mlp,
    close,
    mlp,
    reference_sam,
    sam_step,
    sgd_step,
    train,
    weights,
)
from torch import nn

from sam_train.build import build_model, per_device_batch
from sam_train.cli import _follower_overrides, launch_time
from sam_train.config import ConfigError, validate
from sam_train.sam import RunningStatsGuard
from sam_train.strategy import DDPStrategy, DistInfo, SingleProcess
from sam_train.strategy.process_group import env_ranks


# ---------------------------------------------------------------------------- accumulation
@pytest.mark.parametrize("accum", [2, 4])
def test_accumulating_micro_batches_equals_one_large_batch(accum):
    data = batches()
    accumulated = sam_step(mlp(), accum_steps=accum)
    train(accumulated, data)
    assert close(weights(accumulated.model), reference_sam(data))
    plain, plain_accumulated = mlp(), mlp()
    train(sgd_step(plain), data)
    train(sgd_step(plain_accumulated, accum_steps=accum), data)
    assert close(weights(plain), weights(plain_accumulated))


def test_accumulation_perturbs_once_from_the_whole_batch():
    """The first pass accumulates over every micro-batch before eps: one first_step."""
    step = sam_step(mlp(), accum_steps=4)
    calls = []
    original = step.optimizer.first_step
    step.optimizer.first_step = lambda **kw: calls.append(1) or original(**kw)
    train(step, batches(n=1))
    assert len(calls) == 1


# ---------------------------------------------------------------------------- m-sharpness
@pytest.mark.parametrize(
    ("m", "accum"),
    [(4, 1), (8, 4), (2, 2)],  # micro-batch = chunk, 2 micro-batches per chunk, chunk < micro
)
def test_m_sharpness_gives_each_chunk_its_own_perturbation(m, accum):
    data = batches()
    step = sam_step(mlp(), sam_chunk=m, accum_steps=accum)
    train(step, data)
    assert close(weights(step.model), reference_sam(data, parts=GLOBAL_BATCH // m))
    assert not close(weights(step.model), reference_sam(data), atol=1e-3)


def test_m_sharpness_keeps_running_stats_to_first_passes():
    model = bn_mlp()
    reference = bn_mlp().train()
    x, y = batches(n=1)[0]
    with torch.no_grad():
        for chunk in x.split(4):
            reference(chunk)
    sam_step(model, sam_chunk=4)(x, y)
    for (name, buf), ref in zip(model.named_buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(buf, ref, msg=name)


# ---------------------------------------------------------------------------- clipping
def test_clipping_applies_to_the_second_pass_gradient():
    data = batches()
    step = sam_step(mlp(), clip_grad_norm=0.05)
    train(step, data)
    assert close(weights(step.model), reference_sam(data, clip=0.05))
    assert not close(weights(step.model), reference_sam(data), atol=1e-3)


# ---------------------------------------------------------------------------- fp16 / bf16
def _bomb(model: nn.Module, on_call: int, kind: str) -> None:
    """Forward-backward number ``on_call`` overflows: an inf in the first layer's gradient,
    or a NaN loss (the model's output)."""
    calls = [0]
    model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    if kind == "inf gradient":
        model[0].weight.register_hook(lambda g: g * float("inf") if calls[0] == on_call else g)
    else:
        model.register_forward_hook(
            lambda _m, _i, out: out * float("nan") if calls[0] == on_call else None
        )


@pytest.mark.parametrize("kind", ["inf gradient", "nan loss"])
@pytest.mark.parametrize("overflow_pass", [1, 2])
def test_fp16_overflow_in_either_pass_skips_the_step(overflow_pass, kind):
    model = mlp()
    _bomb(model, overflow_pass, kind)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    step = sam_step(model, precision="fp16", scaler=scaler, clip_grad_norm=1.0)
    before = weights(model)
    x, y = batches(n=1)[0]
    assert not step(x, y).finite
    assert all(torch.equal(p, q) for p, q in zip(before, weights(model), strict=True))
    assert not step.base_optimizer.state, "no momentum buffer from a skipped step"
    assert scaler.get_scale() == 2.0**9 and step.nonfinite.streak == 1
    assert step(x, y).finite  # the next step runs: no "unscale_() has already been called"
    assert not close(before, weights(model), atol=0)
    assert scaler.get_scale() == 2.0**9 and step.base_optimizer.state
    assert step.nonfinite.streak == 0


def test_fp16_perturbation_does_not_depend_on_the_loss_scale():
    """eps comes from the scaled gradient: rho * (s g) / ||s g|| is the same for any s."""
    data = batches()
    results = []
    for scale in (2.0**2, 2.0**14):
        step = sam_step(
            mlp(), precision="fp16", scaler=torch.amp.GradScaler("cpu", init_scale=scale)
        )
        train(step, data)
        results.append(weights(step.model))
    assert close(results[0], results[1], atol=1e-6)
    # and fp16 follows fp32 SAM up to half-precision rounding
    assert close(results[0], reference_sam(data), atol=5e-3)


def test_fp16_logs_the_unscaled_first_gradient_norm():
    fp16 = sam_step(mlp(), precision="fp16", scaler=torch.amp.GradScaler("cpu"))
    fp32 = sam_step(mlp())
    x, y = batches(n=1)[0]
    fp16_norm, fp32_norm = fp16(x, y).grad_norm, fp32(x, y).grad_norm
    assert fp16.scaler.get_scale() > 1.0, "the loss was scaled, or this test proves nothing"
    torch.testing.assert_close(fp16_norm, fp32_norm, rtol=5e-3, atol=0)


@pytest.mark.slow
def test_bf16_trains_the_quickstart(tmp_path):
    from sam_train.train import train as train_run

    cfg = compose_config(
        ["experiment=quickstart", "trainer.amp=bf16", "trainer.epochs=3", "trainer.log_every=100"]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny CNN: OpenMP threads only wait on a shared machine
    try:
        results = train_run(cfg, tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert results["final_acc1"] >= 85.0, results
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["final_acc1"] == results["final_acc1"]


# ---------------------------------------------------------------------------- layout, compile
def _conv_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    )


def _images(n: int = 8):
    gen = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 6, 6, generator=gen), torch.randint(0, 3, (n,), generator=gen)


def test_channels_last_gives_the_same_step():
    x, y = _images()
    results = []
    for channels_last in (False, True):
        model = _conv_model()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        sam_step(model, channels_last=channels_last)(x, y)
        results.append(weights(model) + [b.clone() for b in model.buffers()])
    assert close(results[0], results[1], atol=1e-5)


@pytest.mark.slow
def test_compiled_model_takes_both_passes_and_keeps_first_pass_stats():
    x, y = _images()
    eager = _conv_model()
    sam_step(eager)(x, y)
    model = _conv_model()
    compiled = torch.compile(model, backend="aot_eager")
    sam_step(compiled)(x, y)
    assert close(weights(model), weights(eager), atol=1e-5)
    for a, b in zip(model.buffers(), eager.buffers(), strict=True):
        torch.testing.assert_close(a, b)
    assert model[1].num_batches_tracked.item() == 1


# ---------------------------------------------------------------------------- SyncBatchNorm
def test_sync_bn_conversion_is_guarded_like_batchnorm():
    import timm.layers

    cfg = compose_config(["experiment=quickstart", "model.sync_bn=true"])
    two_cpu_processes = DDPStrategy(DistInfo(rank=0, world_size=2), CPU)
    with pytest.raises(ConfigError, match=r"model\.sync_bn=true needs GPUs"):
        build_model(cfg, 10, two_cpu_processes)
    alone = build_model(cfg, 10, SingleProcess(device=CPU))
    norms = [type(m) for m in alone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and nn.SyncBatchNorm not in norms, "one process keeps its BatchNorm layers"
    synced = timm.layers.convert_sync_batchnorm(bn_mlp()).train()
    assert isinstance(synced[1], nn.SyncBatchNorm)
    guard = RunningStatsGuard(synced)
    before = [b.clone() for b in synced.buffers()]
    with guard.frozen():
        synced(batches(n=1)[0][0])  # one process: SyncBatchNorm falls back to batch_norm
        assert not torch.equal(synced[1].running_mean, before[0])
    assert all(torch.equal(a, b) for a, b in zip(synced.buffers(), before, strict=True))


# ---------------------------------------------------------------------------- config, CLI
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sam.m=0"], "sam.m must be > 0"),
        (["sam.m=4", "sam.sync_perturbation=true"], "cannot be combined"),
    ],
)
def test_bad_distributed_options_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(overrides))


def test_per_device_batch_must_split_evenly():
    assert per_device_batch(compose_config(["trainer.batch_size=64", "sam.m=8"]), 2) == 32
    for overrides, world, message in [
        (["trainer.batch_size=63"], 2, "divisible by the 2 processes"),
        (["trainer.batch_size=64", "trainer.accum_steps=64"], 2, "must divide the per-device"),
        (["trainer.batch_size=64", "sam.m=6"], 2, "sam.m=6 must divide the per-device"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            per_device_batch(compose_config(overrides), world)


def test_followers_write_nothing_unless_the_user_chose_otherwise():
    """No rank writes ``.hydra/`` through Hydra (configs/train.yaml: output_subdir null; rank 0
    writes it once the folder is its run's); followers log to the console."""
    assert _follower_overrides(["experiment=quickstart"]) == ["hydra/job_logging=stdout"]
    assert _follower_overrides(["hydra/job_logging=disabled"]) == []
    assert _follower_overrides(["+hydra/job_logging=none"]) == []


def test_launch_time_is_one_instant_per_process():
    cfg = OmegaConf.create({"a": "${launch_time:%H-%M-%S-%f}", "b": "${launch_time:%H-%M-%S-%f}"})
    first = cfg.a
    assert cfg.b == first == launch_time("%H-%M-%S-%f")


def test_ranks_come_from_torchrun_or_from_srun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(key, raising=False)
    assert env_ranks() is None
    slurm = {"SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_NTASKS": "8"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR and MASTER_PORT unset"):
        env_ranks()
    monkeypatch.setenv("MASTER_ADDR", "node0")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert env_ranks() == (5, 1, 8)
    for key, value in {"RANK": "3", "LOCAL_RANK": "0", "WORLD_SIZE": "4"}.items():
        monkeypatch.setenv(key, value)  # torchrun inside a SLURM allocation wins
    assert env_ranks() == (3, 0, 4)
