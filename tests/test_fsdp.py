"""SAM on FSDP2: the refusals (in process) and one torchrun launch of tests/fsdp_worker.py
(two CPU ranks, gloo) for the step's equality with one process, the sharded state, the
two-pass invariants and an exact crash-and-resume; then its checkpoint resumed in one
process (full state dicts: any number of processes)."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO, torchrun
from torch import nn

from sam_train.config import validate
from sam_train.errors import ConfigError
from sam_train.strategy import FSDPStrategy, SingleProcess

FSDP = ["experiment=quickstart", "trainer.strategy=fsdp"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["sam.m=8"], "sam.m (m-sharpness) needs each rank's unsharded gradient"),
        (["trainer.amp=fp16"], "trainer.amp=fp16 has no sharded grad scaler"),
        (["ema.decay=0.999"], "ema.decay with trainer.strategy=fsdp is not supported yet"),
    ],
)
def test_fsdp_refuses_what_a_sharded_gradient_cannot_do(compose_cfg, overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_cfg([*FSDP, *overrides]))


def test_fsdp_wrap_without_fsdp_is_refused(compose_cfg):
    with pytest.raises(ConfigError, match=re.escape("applies to trainer.strategy=fsdp only")):
        validate(compose_cfg(["experiment=quickstart", "trainer.fsdp_wrap=[Block]"]))


def test_fsdp_accepts_every_variant_and_bf16(compose_cfg):
    for variant in ("sam", "gsam", "looksam", "interval", "fsam", "msam", "rst", "aesam", "wsam"):
        validate(compose_cfg([*FSDP, f"sam={variant}", "trainer.amp=bf16"]))
    validate(compose_cfg([*FSDP, "sam.adaptive=true", "sam.perturb_fraction=0.5"]))


def test_bad_fsdp_options_stop_the_cli_with_exit_2(cli_in_process, tmp_path):
    code, err = cli_in_process([*FSDP, "sam.m=8", f"hydra.run.dir={tmp_path / 'r'}"])
    assert code == 2 and "sam.m (m-sharpness)" in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_default_wrap_policy_picks_the_blocks_of_vits_and_resnets():
    import timm

    from sam_train.models import create_model

    fsdp = FSDPStrategy()
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=3)
    assert [name for name, _ in fsdp.units_of(vit)] == ["blocks.0", "blocks.1", "blocks.2"]
    wrn = create_model("wrn16_4", num_classes=10, in_chans=3)
    assert [type(m).__name__ for _, m in fsdp.units_of(wrn)] == ["_BasicBlock"] * 6
    resnet = timm.create_model("resnet18")
    assert len(fsdp.units_of(resnet)) == 8  # BasicBlocks, none nested in another
    chosen = FSDPStrategy(wrap_classes=["Linear"]).units_of(nn.Sequential(nn.Linear(2, 2)))
    assert [name for name, _ in chosen] == ["0"]
    with pytest.raises(
        ConfigError, match=re.escape("trainer.fsdp_wrap names Block, which Sequential")
    ):
        FSDPStrategy(wrap_classes=["Block"]).units_of(nn.Sequential(nn.Linear(2, 2)))


def test_one_process_with_fsdp_asked_is_a_single_process(compose_cfg):
    from sam_train.build import run_strategy

    assert type(run_strategy(compose_cfg([*FSDP]))) is SingleProcess


@pytest.mark.slow
@pytest.mark.distributed
def test_two_fsdp_ranks_match_one_process_and_resume_exactly(tmp_path, cli_in_process):
    worker = [str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path)]
    code, output = torchrun(worker, tmp_path)
    assert code == 0, output[-5000:]
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    measured = json.loads(line.removeprefix("RESULT "))
    assert {"sam", "asam", "gsam"} <= set(measured["gaps"])
    assert all(gap < 1e-5 for gap in measured["gaps"].values()), measured
    local = measured["local"]
    assert local["backup_local"] == local["params_local"] < local["params_total"]

    # The two-process FSDP checkpoint (step 10 of 21) resumes in ONE process.
    checkpoint = tmp_path / "fsdp_step10.pt"
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["global_step"] == 10 and len(saved["rng"]) == 2
    run = tmp_path / "one_process"
    args = [
        *FSDP,
        "trainer.epochs=1",
        "scheduler.warmup_epochs=0",
        "model.kwargs.drop_rate=0.2",
        "checkpoint.every_n_steps=5",
        "logger=none",
        f"resume={checkpoint}",
        f"hydra.run.dir={run}",
    ]
    code, err = cli_in_process(args)
    assert code == 0, err
    assert "at step 10" in (run / "train.log").read_text()
    final = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert final["global_step"] == 21
