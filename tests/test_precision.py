"""trainer.amp becomes one Precision in build.py, handed to the step, FSDP, the evaluator and
the EMA (which evaluates with the run's)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import TINY_RUN
from torch import nn

import sam_train.strategy.fsdp as fsdp_module
from sam_train.build import build_precision, build_run
from sam_train.step import SAMStep
from sam_train.step.precision import Precision
from sam_train.strategy import DistInfo, FSDPStrategy

CPU = torch.device("cpu")


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_the_run_holds_one_precision(compose_cfg, amp):
    run = build_run(compose_cfg([*TINY_RUN, f"trainer.amp={amp}"]))
    assert run.precision is run.step.precision and run.precision.name == amp
    assert (run.scaler is not None) == (amp == "fp16")


def test_evaluation_builds_no_grad_scaler():
    assert build_precision("fp16", CPU, training=False).scaler is None
    assert build_precision("fp16", CPU).scaler is not None
    assert build_precision("bf16", CPU, training=False).dtype is torch.bfloat16


def test_fp16_training_without_a_scaler_is_refused():
    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="GradScaler"):
        SAMStep(model, optimizer, nn.CrossEntropyLoss(), CPU, precision=Precision("fp16", CPU))


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize(("amp", "dtype"), [("none", None), ("bf16", torch.bfloat16)])
def test_fsdp_computes_in_the_runs_precision(monkeypatch, one_process_group, amp, dtype):
    policies = []
    fully_shard = fsdp_module.fully_shard

    def spy(module, **options):
        policies.append(options.get("mp_policy"))
        return fully_shard(module, **options)

    monkeypatch.setattr(fsdp_module, "fully_shard", spy)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    FSDPStrategy(DistInfo(), CPU, wrap_classes=["Linear"]).shard(model, Precision(amp, CPU))
    assert len(policies) == 3
    assert all((p.param_dtype if p else None) is dtype for p in policies)
