"""Two processes on CPU (gloo), launched with torchrun as a user would (the agent forked from
the test process: see conftest.start_torchrun).

Few launches (each pays ~15 s of imports): tests/ddp_worker.py runs the step-level checks
(perturbation modes against hand-computed SAM, m-sharpness, all-reduce counts, fp16 skips,
evaluation), tests/restart_worker.py a restart, and the CLI the quickstart and a user error.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import REPO, torchrun
from torch.utils.data import DataLoader

from sam_train.data import build_datasets
from sam_train.models import create_model
from sam_train.step import evaluate

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def test_step_under_ddp_matches_single_process_references(tmp_path):
    code, output = torchrun([str(REPO / "tests" / "ddp_worker.py")], tmp_path)
    assert code == 0, output[-5000:]
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    counts = json.loads(line.removeprefix("RESULT "))
    # One bucket (the models are far below DDP's 25 MB cap): per-replica eps syncs once per
    # step, sync_perturbation twice; accumulation and m-sharpness add nothing.
    for mode in ("default", "m=4", "accum=2", "digits_cnn default"):
        assert counts[mode]["allreduce_per_step"] == 1 and counts[mode]["buckets"] == 1
    for mode in ("sync_perturbation", "accum=2,sync_perturbation", "digits_cnn sync"):
        assert counts[mode]["allreduce_per_step"] == 2 and counts[mode]["buckets"] == 1
    small = counts["small buckets sync"]
    assert small["buckets"] > 1 and small["allreduce_per_step"] == 2 * small["buckets"]
    assert all(
        c["buffer_broadcasts_per_step"] == 0 for k, c in counts.items() if "broadcast" not in k
    )


def test_restarted_group_joins_despite_the_previous_attempts_store_keys(tmp_path):
    """torchrun reuses one store across restarts; a restart must not dial the dead attempt."""
    code, output = torchrun([str(REPO / "tests" / "restart_worker.py")], tmp_path, restarts=1)
    assert code == 0, output[-5000:]
    restarted = re.findall(r"RESTARTED rank (\d) attempt (\d)", output)
    assert sorted(restarted) == [("0", "1"), ("1", "1")], output


def test_two_process_quickstart_one_run_folder_exact_test_set(two_process_run):
    """One run folder (the fixture finds exactly one), the test set split exactly."""
    run = two_process_run
    results = json.loads((run / "results.json").read_text())
    assert results["world_size"] == 2 and results["test_images"] == 451
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    assert (run / ".hydra" / "config.yaml").is_file()
    assert (run / "train.log").read_text().count("done in") == 1

    # The checkpoint, evaluated here in one process on the whole test set, scores what the
    # two processes reported (running statistics were averaged before both).
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    model = create_model("digits_cnn", num_classes=10, in_chans=1)
    model.load_state_dict(state["model"])
    test = build_datasets("digits", num_classes=10, test_fraction=0.2505).test
    alone = evaluate(model, DataLoader(test, batch_size=512), torch.device("cpu"))
    assert alone["count"] == 451
    assert alone["acc1"] == pytest.approx(results["final_acc1"], abs=1e-9)
    assert alone["acc5"] == pytest.approx(results["final_acc5"], abs=1e-9)


def test_user_error_under_torchrun_stops_every_rank_with_exit_2(tmp_path):
    code, output = torchrun(
        ["-m", "sam_train", "experiment=quickstart", "trainer.batch_size=63"], tmp_path
    )
    assert code != 0
    assert "must be divisible by the 2 processes" in output, output[-3000:]
    assert re.search(r"exitcode\s*:\s*2\b", output), output[-3000:]  # not a crash (-6)
    assert not re.search(r'File ".*sam_train/', output), output[-3000:]  # no worker traceback
