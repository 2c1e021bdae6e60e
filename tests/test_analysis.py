"""sam-analyze's measures where the answers are known, and the command end to end."""

from __future__ import annotations

import copy
import json
from importlib.metadata import entry_points

import numpy as np
import pytest
import torch
from conftest import compose_config
from omegaconf import OmegaConf
from torch import nn

from sam_train import analysis
from sam_train.analysis import ModelObjective, Objective
from sam_train.analysis.cli import main
from sam_train.checkpoint import save_checkpoint
from sam_train.models import create_model


def _spectrum_matrix(eigenvalues, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(len(eigenvalues), len(eigenvalues))))
    return q @ np.diag(eigenvalues) @ q.T


def _quadratic(a: np.ndarray, w0: np.ndarray):
    """L(w) = 1/2 w^T A w as an Objective over one 'batch'."""
    w = torch.tensor(w0, requires_grad=True)
    a_t = torch.tensor(a)
    return Objective([w], lambda: [(0.5 * w @ a_t @ w, 1.0)]), w


def _trust_region_max(g: np.ndarray, a: np.ndarray, rho: float) -> float:
    """max over ||e|| <= rho of g.e + e.A.e / 2 for positive definite A, solved independently:
    e = (lam I - A)^-1 g with lam > lambda_max chosen by bisection so that ||e|| = rho."""
    low, high = np.linalg.eigvalsh(a).max(), 1e6
    for _ in range(200):
        mid = 0.5 * (low + high)
        e = np.linalg.solve(mid * np.eye(len(g)) - a, g)
        low, high = (mid, high) if np.linalg.norm(e) > rho else (low, mid)
    e = np.linalg.solve(high * np.eye(len(g)) - a, g)
    return float(g @ e + 0.5 * e @ a @ e)


EIGENVALUES = np.r_[np.linspace(0.1, 4.0, 11), 7.5]


def test_top_eigenvalue_is_the_largest_eigenvalue_of_the_quadratic():
    a = _spectrum_matrix(EIGENVALUES)
    objective, w = _quadratic(a, np.ones(len(EIGENVALUES)))
    result = analysis.top_hessian_eigenvalue(objective, tolerance=1e-6)
    assert result["converged"]
    assert result["eigenvalue"] == pytest.approx(7.5, rel=1e-4)
    assert torch.equal(w.detach(), torch.ones(len(EIGENVALUES), dtype=torch.float64))


def test_hutchinson_trace_is_exact_for_a_diagonal_hessian_and_unbiased_otherwise():
    diagonal = np.diag(EIGENVALUES)
    exact = analysis.hessian_trace(_quadratic(diagonal, np.zeros(len(EIGENVALUES)))[0], samples=3)
    assert exact["trace"] == pytest.approx(EIGENVALUES.sum(), rel=1e-12)
    estimate = analysis.hessian_trace(
        _quadratic(_spectrum_matrix(EIGENVALUES), np.zeros(len(EIGENVALUES)))[0], samples=300
    )
    assert abs(estimate["trace"] - EIGENVALUES.sum()) < 4 * estimate["std_error"]


@pytest.mark.parametrize("rho", [0.05, 0.5])
def test_sharpness_at_a_minimum_is_half_rho_squared_times_the_top_eigenvalue(rho):
    objective, _ = _quadratic(_spectrum_matrix(EIGENVALUES), np.zeros(len(EIGENVALUES)))
    result = analysis.sam_sharpness(objective, rho, steps=40)
    assert result["loss"] == 0.0
    assert result["sharpness"] == pytest.approx(0.5 * rho**2 * 7.5, rel=1e-3)


@pytest.mark.parametrize("rho", [0.1, 1.0])
def test_sharpness_away_from_the_minimum_solves_the_trust_region_problem(rho):
    a = _spectrum_matrix(EIGENVALUES, seed=1)
    w0 = np.random.default_rng(2).normal(size=len(EIGENVALUES)) * 0.3
    objective, w = _quadratic(a, w0)
    result = analysis.sam_sharpness(objective, rho, steps=20)
    assert result["sharpness"] == pytest.approx(_trust_region_max(a @ w0, a, rho), rel=1e-6)
    one_step = analysis.sam_sharpness(objective, rho, steps=0)["sharpness"]
    assert one_step < result["sharpness"]  # SAM's single step is only a lower bound
    np.testing.assert_array_equal(w.detach().numpy(), w0)


def test_landscapes_match_the_quadratic_along_the_given_directions():
    a = _spectrum_matrix(EIGENVALUES)
    w0 = np.linspace(-1, 1, len(EIGENVALUES))
    objective, _ = _quadratic(a, w0)
    rng = np.random.default_rng(3)
    d1, d2 = rng.normal(size=len(w0)), rng.normal(size=len(w0))
    alphas, betas = [-1.0, -0.25, 0.0, 0.5], [-0.5, 0.0, 1.0]

    def loss(w):
        return 0.5 * w @ a @ w

    got_1d = analysis.landscape_1d(objective, [torch.tensor(d1)], alphas)
    np.testing.assert_allclose(got_1d, [loss(w0 + x * d1) for x in alphas], rtol=1e-12)
    got_2d = analysis.landscape_2d(objective, [torch.tensor(d1)], [torch.tensor(d2)], alphas, betas)
    expected = [[loss(w0 + x * d1 + y * d2) for x in alphas] for y in betas]
    np.testing.assert_allclose(got_2d, expected, rtol=1e-12)


def test_filter_normalized_direction_matches_each_filter_norm_and_skips_1d_parameters():
    torch.manual_seed(0)
    conv, linear, norm = nn.Conv2d(3, 5, 3), nn.Linear(7, 4), nn.BatchNorm2d(5)
    params = [conv.weight, conv.bias, linear.weight, norm.weight]
    direction = analysis.filter_normalized_direction(params, torch.Generator().manual_seed(0))
    for p, d in zip(params, direction, strict=True):
        assert d.shape == p.shape
        if p.dim() == 1:
            assert not d.any()
        else:
            torch.testing.assert_close(
                d.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-5, atol=0
            )
    again = analysis.filter_normalized_direction(params, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip(direction, again, strict=True))


def test_model_objective_hvp_equals_the_explicit_hessian_over_several_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    batches = [(torch.randn(5, 3).double(), torch.randint(0, 2, (5,))) for _ in range(2)]
    batches.append((torch.randn(2, 3).double(), torch.randint(0, 2, (2,))))  # unequal sizes
    objective = ModelObjective(
        model, batches, nn.CrossEntropyLoss(), batch_statistics=False, chunk_size=5
    )
    assert [len(y) for _, y in objective.chunks] == [5, 5, 2]
    shapes = [p.shape for p in objective.params]
    x_all = torch.cat([x for x, _ in batches])
    y_all = torch.cat([y for _, y in batches])

    def loss_of_flat(flat):
        tensors = torch.split(flat, [s.numel() for s in shapes])
        named = {
            name: t.view(s)
            for (name, _), t, s in zip(model.named_parameters(), tensors, shapes, strict=True)
        }
        out = torch.func.functional_call(model, named, (x_all,))
        return nn.functional.cross_entropy(out, y_all)  # the mean over every image

    flat = torch.cat([p.detach().flatten() for p in objective.params])
    hessian = torch.autograd.functional.hessian(loss_of_flat, flat)
    v = [torch.randn(s, dtype=torch.float64) for s in shapes]
    hv = torch.cat([t.flatten() for t in objective.hvp(v)])
    torch.testing.assert_close(hv, hessian @ torch.cat([t.flatten() for t in v]))
    assert objective.value() == pytest.approx(loss_of_flat(flat).item(), rel=1e-12)


def test_model_objective_uses_batch_statistics_and_leaves_running_statistics_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Dropout(0.5), nn.Linear(6, 2))
    model[1].running_mean.fill_(0.3)
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,))) for _ in range(2)]
    buffers = [b.clone() for b in model.buffers()]
    objective = ModelObjective(model, batches, nn.CrossEntropyLoss())
    analysis.top_hessian_eigenvalue(objective, iterations=3)
    analysis.sam_sharpness(objective, 0.1, steps=2)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    reference = copy.deepcopy(model).train()
    reference[2].eval()  # dropout off, batch norm on each batch's statistics
    expected = sum(nn.functional.cross_entropy(reference(x), y).item() for x, y in batches) / 2
    assert objective.value() == pytest.approx(expected, rel=1e-6)
    running = ModelObjective(model, batches, nn.CrossEntropyLoss(), batch_statistics=False)
    assert running.value() != pytest.approx(expected, rel=1e-3)


# ------------------------------------------------------------------ the command
@pytest.fixture
def quickstart_checkpoint(tmp_path):
    """A checkpoint as sam-train writes it for the quickstart (weights untrained: fast)."""
    cfg = compose_config(["experiment=quickstart"])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, num_classes=10, in_chans=1)
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    state = {"model": model.state_dict(), "epoch": 0, "config": OmegaConf.to_container(cfg)}
    save_checkpoint(state, path)
    return path


def test_sam_analyze_writes_json_and_both_landscape_pictures(quickstart_checkpoint, capsys):
    main(
        [
            str(quickstart_checkpoint),
            str(quickstart_checkpoint),
            "--labels",
            "A",
            "B",
            "--out",
            str(quickstart_checkpoint.parents[2] / "cmp"),
            "--batches",
            "2",
            "--batch-size",
            "32",
            "--rho",
            "0.05",
            "0.1",
            "--ascent-steps",
            "3",
            "--power-iters",
            "10",
            "--trace-samples",
            "2",
            "--points",
            "5",
            "--grid",
            "3",
        ]
    )
    out = quickstart_checkpoint.parents[2] / "cmp"
    report = json.loads((out / "analysis.json").read_text())
    a, b = report["runs"]["A"], report["runs"]["B"]
    assert a["images"] == 64 and a["batches"] == 2
    assert [s["rho"] for s in a["sharpness"]] == [0.05, 0.1]
    assert 0 <= a["sharpness"][0]["sharpness"] <= a["sharpness"][1]["sharpness"]
    assert a["hessian"]["eigenvalue"] > 0 and "trace" in a
    assert a["landscape_1d"]["losses"][2] == pytest.approx(a["loss"])  # alpha = 0 is w itself
    assert len(a["landscape_2d"]["losses"]) == 3 and len(a["landscape_2d"]["losses"][0]) == 3
    assert a["hessian"] == b["hessian"]  # same checkpoint, same batches, same seed
    for name in ("landscape_1d.png", "landscape_2d.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr()
    assert "top eig" in printed.out and "sharp@0.05" in printed.out
    stages = [line for line in printed.out.splitlines() if line.startswith("sam-analyze: [2/2] B:")]
    assert [line.split(": ", 2)[2].split(" (")[0] for line in stages] == [
        "loading the checkpoint and its training batches",
        "loss and accuracy on 64 images",
        "SAM sharpness at rho=0.05",
        "SAM sharpness at rho=0.1",
        "top Hessian eigenvalue",
        "Hessian trace",
        "1-D loss landscape",
        "2-D loss landscape",
        "done",
    ]
    assert all(line.endswith(" s)") for line in stages)  # each with the time elapsed


def test_sam_analyze_default_output_is_beside_the_run(quickstart_checkpoint):
    main(
        [
            *(str(quickstart_checkpoint), "--batches", "1", "--power-iters", "2"),
            *("--no-landscape", "--ascent-steps", "1", "--rho", "0.05"),
        ]
    )
    report = json.loads(
        (quickstart_checkpoint.parents[1] / "analysis" / "analysis.json").read_text()
    )
    assert "landscape_1d" not in report["runs"]["sam=sam"]


def test_sam_analyze_reports_a_bad_checkpoint_in_one_line(tmp_path, capsys):
    bogus = tmp_path / "bogus.pt"
    bogus.write_text("not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        main([str(bogus)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("sam-analyze: error: ") and err.count("\n") == 1
    assert "is corrupt or not a torch file" in err


def test_sam_analyze_names_the_keys_of_a_checkpoint_of_another_model(quickstart_checkpoint, capsys):
    state = torch.load(quickstart_checkpoint, weights_only=False)
    state["config"]["model"]["name"] = "cifar_resnet32"  # weights of digits_cnn
    save_checkpoint(
        {k: v for k, v in state.items() if k not in ("magic", "format_version")},
        quickstart_checkpoint,
    )
    with pytest.raises(SystemExit) as exit_info:
        main([str(quickstart_checkpoint)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not match the configured model" in err
    assert "missing: " in err and "unexpected: features.0.0.weight" in err and " more" in err


def test_sam_analyze_is_an_installed_console_script():
    (script,) = [s for s in entry_points(group="console_scripts") if s.name == "sam-analyze"]
    assert script.load() is main


def test_sam_analyze_applies_overrides_and_data_root_to_the_rebuilt_config(quickstart_checkpoint):
    """``key=value`` is an override, as sam-eval's (it was read as a second checkpoint), and
    ``--data-root`` a string whatever it looks like in YAML (``[x`` ended in a traceback)."""
    from sam_train.analysis.cli import _load, parse_args

    args = parse_args([str(quickstart_checkpoint), "trainer.batch_size=8", "--data-root", "[x"])
    assert args.checkpoints == [quickstart_checkpoint]
    _, cfg, _ = _load(quickstart_checkpoint, args, torch.device("cpu"))
    assert cfg.trainer.batch_size == 8 and cfg.dataset.root == "[x"
