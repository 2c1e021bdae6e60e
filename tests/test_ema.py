"""Model EMA (``ema.decay``): fed only the weights after the base step, resumed bit for bit,
scored beside the live model, and usable as ``checkpoint.best_metric``. The runs mix their
batches too (Mixup/CutMix), so the resume test also covers mixing, and shows a mixed run
learns digits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from conftest import QUICK, compose_config, run_in_process
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timm.utils.model_ema import ModelEmaV3

import sam_train.train as train_module
from sam_train.build import build_run
from sam_train.callbacks import Callback, ModelEMA
from sam_train.config import ConfigError, validate
from sam_train.state import RunState
from sam_train.trainer import Trainer

# 10 steps of 128 digits per epoch; dropout and Mixup make the run depend on every restored
# draw, and the warm-up makes the EMA depend on the step it resumes at.
BASE = [
    *QUICK,
    "trainer.batch_size=128",
    "optimizer.lr=0.2",
    "augment.mixup_alpha=0.8",
    "augment.cutmix_alpha=1.0",
    "trainer.log_every=5",
    "model.kwargs.drop_rate=0.2",
    "ema.decay=0.9",
    "ema.warmup=true",
    "ema.warmup_power=0.75",
]


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


class _Epochs(Callback):
    def __init__(self) -> None:
        self.seen: list[tuple[dict, bool]] = []

    def on_epoch_end(self, trainer, state, is_best) -> None:
        self.seen.append((dict(state.test_metrics), is_best))


def test_the_ema_is_fed_the_weights_after_the_base_step_never_w_plus_eps(monkeypatch):
    cfg = compose_config([*BASE, "trainer.batch_size=256", "trainer.log_every=50"])
    torch.manual_seed(0)  # the same start whatever ran before (the scores are compared)
    run = build_run(cfg)
    after_step: list[list[torch.Tensor]] = []
    forwards: list[list[torch.Tensor]] = []  # two per step: at w, then at w + eps
    fed: list[list[torch.Tensor]] = []
    run.step.base_optimizer.register_step_post_hook(
        lambda *_: after_step.append(_params(run.model))
    )
    run.model.register_forward_pre_hook(
        lambda module, _: forwards.append(_params(module)) if module.training else None
    )
    update = ModelEmaV3.update

    def recording_update(self, model, step=None):
        fed.append(_params(model))
        return update(self, model, step=step)

    monkeypatch.setattr(ModelEmaV3, "update", recording_update)
    ema, epochs = ModelEMA(0.9, warmup=True, warmup_power=0.75), _Epochs()
    Trainer(run, [ema, epochs], best_metric="ema_acc1", log_every=50).fit(RunState())

    steps = 2 * run.steps_per_epoch
    assert len(fed) == len(after_step) == steps
    assert len(forwards) == 2 * steps  # training forwards only
    for i in range(steps):
        assert _same(fed[i], after_step[i]), f"step {i + 1}: not the post-step weights"
        assert not _same(fed[i], forwards[2 * i + 1]), f"step {i + 1}: fed w + eps"
    # The EMA is timm's formula over exactly those weights: the first update copies them.
    manual = [p.clone() for p in after_step[0]]
    for step, weights in enumerate(after_step[1:], start=2):
        decay = min(0.9, 1 - (1 + (step - 1)) ** -0.75)
        for m, w in zip(manual, weights, strict=True):
            m.mul_(decay).add_(w, alpha=1 - decay)
    for m, e in zip(manual, ema.ema.module.parameters(), strict=True):
        torch.testing.assert_close(e, m, rtol=0, atol=1e-6)
    assert not _same(_params(ema.ema.module), _params(run.model)), "an average, not a copy"
    # Best tracking follows the EMA's top-1, which the EMA callback scored before it.
    scores = [metrics["ema_acc1"] for metrics, _ in epochs.seen]
    assert [is_best for _, is_best in epochs.seen] == [True, scores[1] > scores[0]]
    assert all(metrics["ema_acc1"] != metrics["acc1"] for metrics, _ in epochs.seen)


class _Crash(Callback):
    def on_train_step_end(self, trainer, state, output) -> None:
        if state.global_step == 7:
            raise RuntimeError("simulated crash")


def _ema_weights(run: Path) -> dict[str, torch.Tensor]:
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    return last["callbacks"]["ModelEMA"]["module"]


def test_a_crashed_run_resumed_mid_epoch_ends_with_the_same_ema(monkeypatch, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert run_in_process([*BASE, f"hydra.run.dir={whole}"])[0] == 0
    original = train_module.build_callbacks
    monkeypatch.setattr(
        train_module, "build_callbacks", lambda *a, **k: [*original(*a, **k), _Crash()]
    )
    # A snapshot every 3 steps: the crash at step 7 resumes from step 6's, mid-epoch.
    args = [*BASE, "checkpoint.every_n_steps=3", f"hydra.run.dir={broken}"]
    code, err = run_in_process(args)
    assert code == 1 and "simulated crash" in err
    assert torch.load(broken / "checkpoints" / "last.pt", weights_only=False)["global_step"] == 6
    monkeypatch.setattr(train_module, "build_callbacks", original)
    code, err = run_in_process([*args, "resume=auto"])
    assert code == 0, err

    expected, resumed = _ema_weights(whole), _ema_weights(broken)
    live = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert expected.keys() == resumed.keys() == live.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), f"{key} differs after the resume"
    assert any(not torch.equal(expected[k], live[k]) for k in live), "the EMA is not the model"
    results = [json.loads((run / "results.json").read_text()) for run in (whole, broken)]
    for key in ("ema_final_acc1", "ema_best_acc1", "ema_best_epoch", "final_acc1"):
        assert results[0][key] == results[1][key] and results[0][key] is not None
    assert results[0]["final_acc1"] > 40, "a mixed run learns digits (chance: 10%)"
    events = EventAccumulator(str(whole)).Reload()
    assert len(events.Scalars("test_ema/acc1")) == 2
    assert events.Scalars("test_ema/acc1")[-1].value == pytest.approx(results[0]["ema_final_acc1"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["checkpoint.best_metric=test_ema/acc1"], "scores the EMA: set ema.decay"),
        (["ema.decay=1.0"], "ema.decay must be in [0, 1), got 1.0"),
    ],
)
def test_bad_ema_options_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose_config(["experiment=quickstart", *overrides]))
