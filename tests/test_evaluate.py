"""``sam-eval`` and ``model.init_from`` on one tiny digits run trained in-process."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import QUICK, REPO, run_in_process, subprocess_env, torchrun_command

from sam_train import evaluate as sam_eval
from sam_train.build import build_run, build_strategy
from sam_train.checkpoint import load_checkpoint, save_checkpoint
from sam_train.step import evaluate


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 2-epoch quickstart run with model EMA (about 5 s)."""
    run = tmp_path_factory.mktemp("eval") / "run"
    code, err = run_in_process([*QUICK, f"hydra.run.dir={run}", "logger=none", "ema.decay=0.9"])
    assert code == 0, err
    return run


def _eval(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        sam_eval.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sam_eval_of_best_pt_equals_the_best_top1_of_results_json(trained, capsys):
    best = trained / "checkpoints" / "best.pt"
    code, out, err = _eval([str(best)], capsys)
    assert code == 0, err
    results = json.loads((trained / "results.json").read_text())
    report = json.loads((trained / "eval.json").read_text())
    (scored,) = report["results"]
    assert scored["acc1"] == results["best_acc1"] and scored["acc5"] == results["best_acc5"]
    assert scored["count"] == results["test_images"] == 450
    assert f"top-1 {results['best_acc1']:.2f}%" in out and out.count("\n") == 2


def test_sam_eval_of_last_pt_scores_the_ema_callbacks_weights_as_training_did(trained, capsys):
    code, _, err = _eval([str(trained / "checkpoints" / "last.pt")], capsys)
    assert code == 0, err
    (scored,) = json.loads((trained / "eval.json").read_text())["results"]
    results = json.loads((trained / "results.json").read_text())
    assert scored["acc1"] == results["final_acc1"]
    assert scored["ema_acc1"] == results["ema_final_acc1"] != scored["acc1"]


def test_sam_eval_scores_the_ema_weights_a_checkpoint_holds(trained, tmp_path, capsys):
    """The EMA contract: checkpoint["callbacks"]["ModelEMA"]["module"]. Zeroed EMA weights
    score differently from the live ones (and the overrides reach the rebuilt config)."""
    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    zeroed = {k: torch.zeros_like(v) for k, v in state["model"].items()}
    state["callbacks"] = {**state.get("callbacks", {}), "ModelEMA": {"module": zeroed}}
    state.pop("magic"), state.pop("format_version")
    path = save_checkpoint(state, tmp_path / "ema.pt")
    code, out, err = _eval(
        [str(path), "--out", str(tmp_path / "o"), "trainer.eval_batch_size=7"], capsys
    )
    assert code == 0, err
    (scored,) = json.loads((tmp_path / "o" / "eval.json").read_text())["results"]
    live = json.loads((trained / "results.json").read_text())["best_acc1"]
    assert scored["acc1"] == live
    # all-zero weights: equal logits for every class, so top-1 is whatever class wins ties
    assert scored["ema_acc1"] < 20 and scored["ema_loss"] == pytest.approx(2.302585, abs=1e-4)
    assert "EMA loss" in out


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "state_dict", "override"])
def test_sam_eval_refuses_a_bad_file_with_one_line(trained, tmp_path, capsys, kind):
    best = trained / "checkpoints" / "best.pt"
    path = tmp_path / "x.pt"
    args = [str(path)]
    if kind == "garbage":
        path.write_text("not a checkpoint")
    elif kind == "truncated":
        path.write_bytes(best.read_bytes()[:4000])
    elif kind == "state_dict":
        torch.save(load_checkpoint(best)["model"], path)
    elif kind == "override":
        args = [str(best), "--out", str(tmp_path), "dataset.nmae=3"]
    code, out, err = _eval(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sam-eval: error: "), err
    assert "Traceback" not in err and not out
    expected = {
        "missing": "does not exist",
        "garbage": "corrupt or not a torch file",
        "truncated": "corrupt or not a torch file",
        "state_dict": "is not a sam-train checkpoint",
        "override": "Key 'nmae' not in",
    }[kind]
    assert expected in err


@pytest.mark.slow
@pytest.mark.distributed
def test_sam_eval_under_torchrun_scores_every_test_image_once(trained, tmp_path):
    best = trained / "checkpoints" / "best.pt"
    out = tmp_path / "ddp"
    result = subprocess.run(
        torchrun_command(["-m", "sam_train.evaluate", str(best), "--out", str(out)]),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (scored,) = json.loads((out / "eval.json").read_text())["results"]
    results = json.loads((trained / "results.json").read_text())
    assert scored["count"] == 450 and scored["acc1"] == results["best_acc1"]
    assert result.stdout.count(f"{best}:") == 1  # rank 0 prints


# ---------------------------------------------------------------------------- init_from
def test_init_from_a_runs_checkpoint_starts_where_that_run_was(trained, compose_cfg):
    """A new run from best.pt: the same test scores before any step, a fresh optimizer."""
    best = trained / "checkpoints" / "best.pt"
    cfg = compose_cfg([*QUICK, f"model.init_from={best}", "seed=1", "dataset.label_noise=0.2"])
    run = build_run(cfg, build_strategy("cpu"))
    scores = evaluate(run.model, run.loaders.test, run.device)
    assert scores["acc1"] == json.loads((trained / "results.json").read_text())["best_acc1"]
    assert not run.optimizer.state  # no momentum carried over: not a resume
    assert run.optimizer.param_groups[0]["lr"] < cfg.optimizer.lr  # the warm-up starts anew


def test_init_from_a_state_dict_with_another_head_reinitialises_it_and_trains(
    trained, tmp_path, capsys
):
    """A plain (timm-style) state dict of a 5-class model into a 10-class run."""
    import timm

    five = timm.create_model("digits_cnn", num_classes=5, in_chans=1)
    weights = load_checkpoint(trained / "checkpoints" / "best.pt")["model"]
    five.load_state_dict(
        {k: v for k, v in weights.items() if not k.startswith("fc.")}, strict=False
    )
    path = tmp_path / "five.pth"
    torch.save({"state_dict": five.state_dict()}, path)
    run = tmp_path / "ft"
    code, err = run_in_process(
        [
            *QUICK,
            "trainer.epochs=1",
            f"model.init_from={path}",
            f"hydra.run.dir={run}",
            "logger=none",
        ]
    )
    assert code == 0, err
    log = (run / "train.log").read_text()
    assert "classifier re-initialised" in log and "tensors loaded" in log
    results = json.loads((run / "results.json").read_text())
    assert results["final_acc1"] > 80  # the features carried over: one epoch suffices
    trained_model = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    assert trained_model["fc.weight"].shape == (10, 128)
    path.unlink()  # a fine-tune's checkpoint still evaluates without its starting file
    code, _, err = _eval(
        [str(run / "checkpoints" / "best.pt"), "trainer.eval_batch_size=50"], capsys
    )
    assert code == 0, err


def _digits_cnn(classes: int = 10):
    import timm

    import sam_train.models  # noqa: F401  (registers digits_cnn)

    torch.manual_seed(classes)
    return timm.create_model("digits_cnn", num_classes=classes, in_chans=1)


def test_init_weights_loads_the_body_resets_the_head_and_reads_safetensors(tmp_path):
    from safetensors.torch import save_file

    from sam_train.models.init_weights import init_model_weights

    source, target = _digits_cnn(5), _digits_cnn(10)
    head_before = target.fc.weight.clone()
    save_file(source.state_dict(), tmp_path / "w.safetensors")
    report = init_model_weights(target, tmp_path / "w.safetensors")
    assert set(report.head_reset) == {"fc.weight", "fc.bias"} and not report.unexpected
    for key, value in source.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(target.state_dict()[key], value), key
    assert torch.equal(target.fc.weight, head_before)  # the new head keeps its own init


def test_init_strict_refuses_keys_that_do_not_fit_and_non_strict_loads_the_rest(tmp_path):
    from sam_train.errors import CheckpointError
    from sam_train.models.init_weights import init_model_weights

    source = _digits_cnn(10).state_dict()
    source["extra.weight"] = torch.ones(3)
    del source["features.0.1.running_mean"]
    torch.save(source, tmp_path / "w.pth")
    with pytest.raises(CheckpointError, match=r"missing: features\.0\.1\.running_mean.*unexpected"):
        init_model_weights(_digits_cnn(10), tmp_path / "w.pth")
    target = _digits_cnn(10)
    report = init_model_weights(target, tmp_path / "w.pth", strict=False)
    assert report.missing == ("features.0.1.running_mean",)
    assert report.unexpected == ("extra.weight",)
    assert torch.equal(target.fc.weight, source["fc.weight"])


def test_init_from_and_pretrained_are_refused_with_one_line(cli_in_process, tmp_path):
    code, err = cli_in_process([*QUICK, f"model.init_from={tmp_path / 'none.pt'}"])
    assert code == 2 and "model.init_from=" in err and "no such file" in err
    torch.save({}, tmp_path / "w.pt")
    code, err = cli_in_process(
        [*QUICK, f"model.init_from={tmp_path / 'w.pt'}", "model.pretrained=true"]
    )
    assert code == 2 and "choose one" in err
