"""scripts/gpu_check.sh --device cpu: the dry run of the GPU check, so it cannot rot."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO, subprocess_env


@pytest.mark.slow
@pytest.mark.distributed
def test_gpu_check_dry_run_on_the_cpu_passes_every_path_it_has(tmp_path):
    done = subprocess.run(
        [str(REPO / "scripts" / "gpu_check.sh"), "--device", "cpu"],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        # A guard against a hang only: the dry run takes 33 s on a quiet machine and went past
        # 300 s at load 10 (seven agents on two cores); what it checks is in the rows below.
        timeout=1800,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1]
        for line in done.stdout.splitlines()
        if line.startswith("| ") and line.count(" | ") == 3 and "---" not in line
    }
    rows.pop("path", None)
    assert rows["dataset.loader=gpu"] == "skip"  # the CUDA-only paths say so
    for path in ("fp32", "fp16 injected overflow", "SAM variant gsam", "ImageFolder"):
        assert rows[path] == "ok", rows
    assert rows["torchrun 1 process, DDP + FSDP"] == "ok"
    assert rows["bench --quick"] == "ok"  # with 0 host reads per step, or it fails
    assert "FAIL" not in rows.values(), rows
