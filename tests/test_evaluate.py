"""``sam-eval`` and ``model.init_from`` on one tiny digits run trained in-process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import QUICK, REPO, run_in_process, torchrun

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


def _main(module, argv: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of an entry point's ``main(argv)``."""
    try:
        module.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _eval(argv: list[str], capsys) -> tuple[int, str, str]:
    return _main(sam_eval, argv, capsys)


def _results(folder: Path, prefix: str = "") -> list[dict]:
    """The evaluations in a results folder whose names start with ``prefix``."""
    return [json.loads(p.read_text()) for p in sorted(folder.glob(f"{prefix}*.json"))]


def test_sam_eval_of_best_pt_equals_the_best_top1_of_results_json(trained, capsys):
    best = trained / "checkpoints" / "best.pt"
    code, out, err = _eval([str(best)], capsys)
    assert code == 0, err
    results = json.loads((trained / "results.json").read_text())
    (scored,) = _results(trained / "eval", "best-")
    assert scored["acc1"] == results["best_acc1"] and scored["acc5"] == results["best_acc5"]
    assert scored["count"] == results["test_images"] == 450
    assert f"top-1 {results['best_acc1']:.2f}%" in out and out.count("\n") == 2


def test_sam_eval_of_last_pt_scores_the_ema_callbacks_weights_as_training_did(trained, capsys):
    code, _, err = _eval([str(trained / "checkpoints" / "last.pt")], capsys)
    assert code == 0, err
    scored = _results(trained / "eval", "last-")[0]
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
    (scored,) = _results(tmp_path / "o")
    live = json.loads((trained / "results.json").read_text())["best_acc1"]
    assert scored["acc1"] == live
    # all-zero weights: equal logits for every class, so top-1 is whatever class wins ties
    assert scored["ema_acc1"] < 20 and scored["ema_loss"] == pytest.approx(2.302585, abs=1e-4)
    assert "EMA loss" in out


def test_each_evaluation_keeps_its_own_result(trained, tmp_path, capsys):
    """best.pt, then last.pt, then best.pt with an override: three files, the first intact."""
    run = Path(shutil.copytree(trained, tmp_path / "run", ignore=shutil.ignore_patterns("eval")))
    best, last = run / "checkpoints" / "best.pt", run / "checkpoints" / "last.pt"
    assert _eval([str(best)], capsys)[0] == 0
    (first,) = (run / "eval").iterdir()
    content = first.read_text()
    assert _eval([str(last)], capsys)[0] == 0
    assert _eval([str(best), "trainer.eval_batch_size=7"], capsys)[0] == 0
    names = {p.name for p in (run / "eval").iterdir()}
    step = load_checkpoint(best)["global_step"]
    assert first.name == f"best-step{step}.json" and len(names) == 3
    (hashed,) = {n for n in names if n.startswith(f"best-step{step}-")}
    assert any(n.startswith("last-step") for n in names)
    assert first.read_text() == content
    assert json.loads((run / "eval" / hashed).read_text())["overrides"] == [
        "trainer.eval_batch_size=7"
    ]


def test_per_class_accuracy_and_confusion_are_the_checkpoints_predictions(
    trained, tmp_path, capsys
):
    """Every test image through the checkpoint's model by hand: the same confusion matrix."""
    from sam_train.build import build_data, model_from_checkpoint

    best = trained / "checkpoints" / "best.pt"
    code, out, err = _eval([str(best), "--per-class", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    (scored,) = _results(tmp_path)
    model, cfg, _ = model_from_checkpoint(best)
    test = build_data(cfg).test
    images = torch.stack([test[i][0] for i in range(len(test))])
    targets = torch.tensor([test[i][1] for i in range(len(test))])
    with torch.no_grad():
        predicted = model.eval()(images).argmax(dim=1)
    expected = torch.zeros(10, 10, dtype=torch.int64)
    expected.index_put_((targets, predicted), torch.ones_like(targets), accumulate=True)
    assert scored["confusion"] == expected.tolist()
    for entry in scored["per_class"]:
        row = expected[entry["class"]]
        assert entry["images"] == row.sum().item()
        assert entry["acc1"] == pytest.approx(100.0 * row[entry["class"]].item() / row.sum().item())
    assert scored["acc1"] == pytest.approx(100.0 * expected.trace().item() / len(test))
    assert [c["name"] for c in scored["per_class"]] == [str(i) for i in range(10)]
    png = tmp_path / f"best-step{scored['global_step']}-confusion.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"written to {png}" in out


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "missing_job",  # a sweep job's checkpoint, mistyped: a path with '=', not an override
        "missing_job_relative",
        "garbage",
        "truncated",
        "state_dict",
        "override",
        "folder",
        "out_is_file",
    ],
)
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
    elif kind == "missing_job":
        args = [str(tmp_path / "sweep" / "sam=sam,seed=1" / "checkpoints" / "lats.pt")]
    elif kind == "missing_job_relative":
        args = ["sam=sam,seed=1/checkpoints/lats.pt"]
    elif kind == "override":
        args = [str(best), "--out", str(tmp_path), "dataset.nmae=3"]
    elif kind == "folder":
        args = [str(trained)]
    elif kind == "out_is_file":
        path.write_text("x")
        args = [str(best), "--out", str(path)]
    code, out, err = _eval(args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sam-eval: error: "), err
    assert "Traceback" not in err and not out
    expected = {
        "missing": "does not exist",
        "missing_job": "lats.pt does not exist, expected a checkpoint file",
        "missing_job_relative": "lats.pt does not exist, expected a checkpoint file",
        "garbage": "corrupt or not a torch file",
        "truncated": "corrupt or not a torch file",
        "state_dict": "is not a sam-train checkpoint",
        "override": "unknown key dataset.nmae; did you mean dataset.name?",
        "folder": "is a folder, expected a checkpoint file",
        "out_is_file": "is a file, expected a folder for the results",
    }[kind]
    assert expected in err


@pytest.mark.slow
@pytest.mark.distributed
def test_sam_eval_under_torchrun_scores_every_test_image_once(trained, tmp_path):
    best = trained / "checkpoints" / "best.pt"
    out = tmp_path / "ddp"
    code, output = torchrun(["-m", "sam_train.evaluate", str(best), "--out", str(out)], REPO)
    assert code == 0, output[-3000:]
    (scored,) = _results(out)
    results = json.loads((trained / "results.json").read_text())
    assert scored["count"] == 450 and scored["acc1"] == results["best_acc1"]
    assert output.count(f"{best}:") == 1  # rank 0 prints


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


# ---------------------------------------------------------------------------- sam-export
def _test_images(run: Path, count: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The run's first test digits through the evaluation transform, and their labels."""
    test = sam_eval.load_checkpoint_for_inference(run / "checkpoints" / "best.pt", []).data.test
    return torch.stack([test[i][0] for i in range(count)]), torch.tensor(test.targets[:count])


def _logits(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images)


@pytest.mark.parametrize("ema", [False, True])
def test_sam_export_loads_back_in_timm_with_the_checkpoints_logits(trained, tmp_path, capsys, ema):
    """sam-train's own model (registered in timm by sam_train.models): local-dir and
    pretrained_cfg_overlay both rebuild it; the EMA export carries the EMA weights."""
    import timm

    from sam_train import export
    from sam_train.data.transforms import DIGITS_MEAN, DIGITS_STD

    best, out = trained / "checkpoints" / "last.pt", tmp_path / "exported"
    code, stdout, err = _main(export, [str(best), "--out", str(out), *["--ema"] * ema], capsys)
    assert code == 0, err
    assert f"wrote {out / 'model.safetensors'}" in stdout
    loaded = sam_eval.load_checkpoint_for_inference(best, [])
    source = loaded.ema_model(best) if ema else loaded.model
    images, _ = _test_images(trained)
    expected = _logits(source, images)
    from_dir = timm.create_model(f"local-dir:{out}", pretrained=True)
    overlay = timm.create_model(
        "digits_cnn",
        pretrained=True,
        num_classes=10,
        in_chans=1,
        pretrained_cfg_overlay={"file": str(out / "model.safetensors")},
    )
    for model in (from_dir, overlay):
        assert torch.equal(_logits(model, images), expected)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "digits_cnn"
    assert config["label_names"] == [str(i) for i in range(10)]
    cfg = config["pretrained_cfg"]
    assert (tuple(cfg["mean"]), tuple(cfg["std"])) == (DIGITS_MEAN, DIGITS_STD)  # not (0.5,)
    assert cfg["input_size"] == [1, 8, 8]
    if ema:  # the EMA of this short run is far from the live weights
        assert not torch.allclose(expected, _logits(loaded.model, images))


def test_sam_export_of_a_timm_architecture_loads_with_timm_alone(trained, tmp_path, capsys):
    """A checkpoint of timm's test_resnet: the export rebuilds through timm's registry."""
    import timm

    from sam_train import export

    state = load_checkpoint(trained / "checkpoints" / "best.pt")
    torch.manual_seed(0)
    state["config"]["model"]["name"] = "test_resnet"
    state["model"] = timm.create_model("test_resnet", num_classes=10, in_chans=1).state_dict()
    state.pop("callbacks", None), state.pop("magic"), state.pop("format_version")
    path = save_checkpoint(state, tmp_path / "resnet.pt")
    out = tmp_path / "exported"
    code, _, err = _main(export, [str(path), "--out", str(out)], capsys)
    assert code == 0, err
    images, _ = _test_images(trained)
    expected = _logits(sam_eval.load_checkpoint_for_inference(path, []).model, images)
    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(_logits(model, images), expected)
    assert json.loads((out / "config.json").read_text())["architecture"] == "test_resnet"


@pytest.mark.parametrize("kind", ["not_empty", "out_is_file", "folder", "no_ema"])
def test_sam_export_refuses_bad_paths_in_one_line_before_writing(trained, tmp_path, capsys, kind):
    from sam_train import export

    best, out = trained / "checkpoints" / "best.pt", tmp_path / "out"
    args = [str(best), "--out", str(out)]
    if kind == "not_empty":
        out.mkdir()
        (out / "other.txt").write_text("x")
    elif kind == "out_is_file":
        out.write_text("x")
    elif kind == "folder":
        args[0] = str(trained)
    elif kind == "no_ema":
        state = load_checkpoint(best)
        state.pop("callbacks", None), state.pop("magic"), state.pop("format_version")
        args[0] = str(save_checkpoint(state, tmp_path / "plain.pt"))
        args.append("--ema")
    code, stdout, err = _main(export, args, capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sam-export: error: "), err
    expected = {
        "not_empty": "is not empty",
        "out_is_file": "is a file, expected a new folder for the export",
        "folder": "is a folder, expected a checkpoint file",
        "no_ema": "holds no EMA weights",
    }[kind]
    assert expected in err and not stdout
    assert not (out / "model.safetensors").exists()


# ---------------------------------------------------------------------------- sam-predict
def test_sam_predict_gives_the_models_top_k_on_image_files(trained, tmp_path, capsys):
    """Test digits saved as 8-bit PNGs: the CSV's classes and probabilities are the
    checkpoint's softmax on the test set's own tensors (up to the 8-bit rounding)."""
    import csv

    import numpy as np
    from PIL import Image

    from sam_train import predict
    from sam_train.data.transforms import DIGITS_MEAN, DIGITS_STD

    images, labels = _test_images(trained, 12)
    folder = tmp_path / "images"
    folder.mkdir()
    raw = images * DIGITS_STD[0] + DIGITS_MEAN[0]  # back to [0, 1]
    for i, image in enumerate(raw):
        pixels = np.round(image[0].numpy() * 255).clip(0, 255).astype("uint8")
        Image.fromarray(pixels, "L").save(folder / f"{i:02d}.png")
    best, out = trained / "checkpoints" / "best.pt", tmp_path / "p.csv"
    code, stdout, err = _main(predict, [str(best), str(folder), "--out", str(out)], capsys)
    assert code == 0, err
    assert stdout == f"wrote 12 predictions to {out}\n"
    with out.open(newline="") as file:
        rows = list(csv.DictReader(file))
    probs = _logits(sam_eval.load_checkpoint_for_inference(best, []).model, images).softmax(1)
    top = probs.topk(5, dim=1)
    for i, row in enumerate(rows):
        assert row["image"] == str(folder / f"{i:02d}.png")
        for rank in range(5):
            assert float(row[f"prob_{rank + 1}"]) == pytest.approx(
                probs[i, int(row[f"class_{rank + 1}"])].item(), abs=0.02
            )
            assert row[f"name_{rank + 1}"] == row[f"class_{rank + 1}"]  # digits' names
        if top.values[i, 0] - top.values[i, 1] > 0.05:
            assert int(row["class_1"]) == top.indices[i, 0].item()
    hits = sum(
        int(row["class_1"]) == label for row, label in zip(rows, labels.tolist(), strict=True)
    )
    assert hits >= 10  # a trained model: most of these test digits right


@pytest.mark.parametrize("kind", ["missing_image", "empty_folder", "out_is_folder"])
def test_sam_predict_refuses_bad_paths_in_one_line(trained, tmp_path, capsys, kind):
    from sam_train import predict

    best, out = trained / "checkpoints" / "best.pt", tmp_path / "p.csv"
    target = tmp_path / "missing.png"
    if kind == "empty_folder":
        target = tmp_path / "empty"
        target.mkdir()
    elif kind == "out_is_folder":
        out = tmp_path
        target = trained  # never read: --out is checked first
    code, stdout, err = _main(predict, [str(best), str(target), "--out", str(out)], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith("sam-predict: error: "), err
    expected = {
        "missing_image": "does not exist",
        "empty_folder": "holds no image file",
        "out_is_folder": "is a folder, expected the .csv file to write",
    }[kind]
    assert expected in err and not stdout
