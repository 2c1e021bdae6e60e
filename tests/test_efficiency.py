"""scripts/efficiency.py's protocol: tune on seeds 100-102, freeze, report seeds 0-4."""

from __future__ import annotations

import atexit
import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from sam_train.checkpoint import MODEL, OPTIMIZER, load_checkpoint
from sam_train.errors import EXIT_USER_ERROR

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import efficiency


def _tuned(label: str, noise: float, scores: list[float]) -> dict:
    """Finished tuning runs of ``label``'s grid, point i scoring scores[i] on every seed."""
    runs = {}
    for point, score in zip(efficiency.GRID[label], scores, strict=True):
        for seed in efficiency.TUNE_SEEDS:
            runs[efficiency.run_key(label, noise, point, seed)] = {"final_acc1": score}
    return runs


def test_the_point_is_chosen_only_when_its_whole_grid_has_run_and_ties_keep_the_first():
    runs = _tuned("SAM", 0.4, [90.0, 95.0, 95.0])
    assert efficiency.chosen_point("SAM", 0.4, runs) == efficiency.GRID["SAM"][1]
    runs.pop(efficiency.run_key("SAM", 0.4, efficiency.GRID["SAM"][2], 101))
    assert efficiency.chosen_point("SAM", 0.4, runs) is None
    assert efficiency.chosen_point("SGD", 0.4, {}) == []  # one point: nothing to tune


def test_reported_seeds_run_only_after_the_choice_and_never_on_tuning_seeds():
    before = [job for job in efficiency.pending_jobs({}) if job[:2] == ("SAM", 0.4)]
    assert {seed for *_, seed in before} == set(efficiency.TUNE_SEEDS)
    after = efficiency.pending_jobs(_tuned("SAM", 0.4, [90.0, 95.0, 91.0]))
    sam = [job for job in after if job[:2] == ("SAM", 0.4)]
    assert [(point, seed) for *_, point, seed in sam] == [
        (efficiency.GRID["SAM"][1], seed) for seed in efficiency.REPORT_SEEDS
    ]


def test_the_store_merges_runs_under_its_lock_and_the_table_reads_them(tmp_path):
    path = tmp_path / "runs.json"
    with efficiency.locked_store(path) as store:
        store["runs"]["a"] = {"final_acc1": 1.0}
    with efficiency.locked_store(path) as store:
        store["runs"]["b"] = {"final_acc1": 2.0}
    assert set(efficiency.read_store(path)["runs"]) == {"a", "b"}

    runs = {
        efficiency.run_key("SGD", 0.4, [], seed): {"final_acc1": acc, "passes_per_step": 1.0}
        for seed, acc in zip(efficiency.REPORT_SEEDS, [70, 72, 74, 76, 78], strict=True)
    }
    table = efficiency.table({"runs": runs, "costs": {"SGD": {"x_sgd": 1.0}}})
    assert "| SGD | - | 1.00 | 1.00 | 74.0 ± 3.2 | 5 |  |" in table
    assert "| SAM | tuning: 0/9 runs |  |  | not run | 0 |  |" in table


def test_a_write_cut_short_leaves_the_stored_runs_whole(tmp_path, monkeypatch):
    """Killed while writing (here: half the text written, then an error), the store keeps
    every run it had: the next session continues from it."""
    path = tmp_path / "runs.json"
    with efficiency.locked_store(path) as store:
        store["runs"]["a"] = {"final_acc1": 1.0}
    write_text = Path.write_text

    def half_then_killed(self: Path, text: str, *args, **kwargs):
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", half_then_killed)
    with pytest.raises(KeyboardInterrupt), efficiency.locked_store(path) as store:
        store["runs"]["b"] = {"final_acc1": 2.0}
    monkeypatch.undo()
    assert efficiency.read_store(path)["runs"] == {"a": {"final_acc1": 1.0}}


def test_the_gap_to_sam_pairs_the_runs_seed_by_seed():
    """A seed draws the noisy labels and the initial weights: the gap is taken per seed,
    over the seeds both variants reported, so its spread is the method's alone."""
    runs = _tuned("SAM", 0.4, [95.0, 90.0, 90.0])
    sam, msam = efficiency.GRID["SAM"][0], efficiency.GRID["MSAM"][0]
    runs.update(_tuned("MSAM", 0.4, [95.0, 90.0, 90.0]))
    for seed, acc in zip(efficiency.REPORT_SEEDS, [90, 92, 94, 96, 98], strict=True):
        runs[efficiency.run_key("SAM", 0.4, sam, seed)] = {"final_acc1": acc}
        if seed != 4:  # MSAM's last seed has not run: SAM's 98 is left out of the pairs
            runs[efficiency.run_key("MSAM", 0.4, msam, seed)] = {"final_acc1": acc - 0.4 * seed}
    assert efficiency.paired_gap("MSAM", 0.4, {"runs": runs, "costs": {}}) == pytest.approx(
        [0, -0.4, -0.8, -1.2]
    )
    table = efficiency.table({"runs": runs, "costs": {}})
    assert "| MSAM | sam.rho=1.0 |  |  | 92.4 ± 2.1 | 4 | -0.6 ± 0.5 |" in table
    assert "| SAM | sam.rho=0.2 |  |  | 94.0 ± 3.2 | 5 |  |" in table


def test_the_work_order_holds_every_variant_at_every_noise_level_once():
    expected = sorted(
        (label, noise) for label in efficiency.VARIANTS for noise in efficiency.NOISES
    )
    assert sorted(efficiency.PRIORITY) == expected


def test_the_frontier_charges_a_variant_for_its_runs_mix_of_steps():
    """AE-SAM is timed from a run's start, where every step ascends (2 passes, 2.0x); runs
    that took the ascent on half of the steps (1.5 passes) cost 1.5x. SAM's timed steps are
    its runs' mix: its cost is left as timed, and so is a one-pass variant's."""
    runs = {}
    for label, passes in (("AE-SAM", 1.5), ("SAM", 2.0), ("MSAM", 1.0)):
        for seed in efficiency.REPORT_SEEDS:
            point = efficiency.GRID[label][0]
            runs[efficiency.run_key(label, 0.4, point, seed)] = {
                "final_acc1": 90.0,
                "passes_per_step": passes,
            }
        runs.update(_tuned(label, 0.4, [95.0, 90.0, 90.0]))
    costs = {
        "AE-SAM": {"x_sgd": 2.0, "passes_per_step": 2.0},
        "SAM": {"x_sgd": 1.99, "passes_per_step": 2.0},
        "MSAM": {"x_sgd": 1.01, "passes_per_step": 1.0},
    }
    store = {"runs": runs, "costs": costs}
    assert efficiency.row("AE-SAM", 0.4, store)["x_sgd"] == 1.5
    assert efficiency.row("SAM", 0.4, store)["x_sgd"] == 1.99
    assert efficiency.row("MSAM", 0.4, store)["x_sgd"] == 1.01
    assert efficiency.row("AE-SAM", 0.6, store)["x_sgd"] == 2.0  # no runs: as timed
    assert "| AE-SAM | 2.00 | " in efficiency.cost_table(
        {"costs": {k: {**v, "cpu_ms": 30.0} for k, v in costs.items()}}
    )


def test_the_figures_labels_cover_no_point_and_no_other_label():
    """Eight variants within 0.1x and 3 points of each other, as SAM's neighbours at 2x are:
    each label is readable (no other label or point under it) and inside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    points = [(f"variant {i}", 1.95 + 0.015 * i, 95 + 0.4 * (i % 4)) for i in range(8)]
    ax.plot([x for _, x, _ in points], [y for *_, y in points], "o")
    ax.set_xlim(0.9, 2.2)
    ax.set_ylim(50, 100)
    efficiency._label_points(ax, points)
    renderer = fig.canvas.get_renderer()
    from matplotlib.text import Text  # the text's own box, without its leader line

    for text in ax.texts:
        text.update_positions(renderer)
    boxes = [Text.get_window_extent(text, renderer) for text in ax.texts]
    frame = ax.get_window_extent(renderer)
    assert len(boxes) == len(points)
    for i, box in enumerate(boxes):
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 <= frame.y1
        assert not any(box.overlaps(other) for other in boxes[i + 1 :]), ax.texts[i].get_text()
        for _, x, y in points:
            assert not box.contains(*ax.transData.transform((x, y))), ax.texts[i].get_text()
    plt.close(fig)


# One epoch of the preset's SAM at a quarter of its width: seconds (the run's own options).
TINY = ["trainer.epochs=1", "scheduler.warmup_epochs=0", "+model.kwargs.width=4"]
TIMINGS = {"train_seconds", "images_per_sec", "wall_time_s"}  # results.json's clock readings


def _run_folder(out: Path) -> Path:
    return out / efficiency.run_key("SAM", 0.4, TINY, 0)


def _files(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()}


@pytest.mark.slow
def test_a_forked_run_computes_what_a_new_interpreter_computes(tmp_path):
    """The runner's forked child and ``python -m sam_train`` (which pays the imports again):
    the same results, bit for bit, the same weights and optimizer state, the same files."""
    forked = efficiency.train("SAM", 0.4, TINY, 0, tmp_path / "fork")
    spawned = efficiency.train("SAM", 0.4, TINY, 0, tmp_path / "spawn", fork=False)
    assert forked is not None and spawned is not None
    fork_dir, spawn_dir = _run_folder(tmp_path / "fork"), _run_folder(tmp_path / "spawn")
    results = [json.loads((d / "results.json").read_text()) for d in (fork_dir, spawn_dir)]
    assert results[0]["epochs_run"] == 1 and results[0]["passes_per_step"] == 2.0
    assert [{k: v for k, v in r.items() if k not in TIMINGS} for r in results] == [
        {k: v for k, v in results[1].items() if k not in TIMINGS}
    ] * 2
    assert _files(fork_dir) == _files(spawn_dir)
    assert (fork_dir / ".hydra/config.yaml").read_text() == (
        spawn_dir / ".hydra/config.yaml"
    ).read_text()
    checkpoints = [load_checkpoint(d / "checkpoints/last.pt") for d in (fork_dir, spawn_dir)]
    for name, tensor in checkpoints[1][MODEL].items():
        assert torch.equal(checkpoints[0][MODEL][name], tensor), name
    momentum = [c[OPTIMIZER]["state"] for c in checkpoints]
    assert momentum[0].keys() == momentum[1].keys() and momentum[0]
    for key, state in momentum[1].items():
        assert torch.equal(momentum[0][key]["momentum_buffer"], state["momentum_buffer"])


def test_a_failed_or_killed_run_is_the_childs_exit_code_and_the_runner_goes_on(
    tmp_path, monkeypatch
):
    runner, trace = os.getpid(), tmp_path / "exit_handler_ran_in_a_child"

    def runners_exit_handler() -> None:  # e.g. removing a temporary folder the runner made
        if os.getpid() != runner:
            trace.touch()

    atexit.register(runners_exit_handler)
    try:
        assert efficiency.run_forked([*TINY, "trainer.epochs=-1"]) == EXIT_USER_ERROR
    finally:
        atexit.unregister(runners_exit_handler)
    assert not trace.exists()
    assert efficiency.train("SAM", 0.4, ["trainer.epochs=oops"], 0, tmp_path) is None

    from sam_train import cli

    monkeypatch.setattr(cli, "main", lambda: os.kill(os.getpid(), signal.SIGKILL))
    assert efficiency.run_forked(TINY) == -signal.SIGKILL
    assert efficiency.train("SAM", 0.4, TINY, 0, tmp_path) is None
    assert os.environ["OMP_NUM_THREADS"] == "1"  # and this process is still here
