"""scripts/gpu_check.sh --device cpu: the dry run of the GPU check, so it cannot rot."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import gpu_check


@pytest.mark.slow
@pytest.mark.distributed
def test_gpu_check_dry_run_on_the_cpu_passes_every_path_it_has(capsys):
    """gpu_check.py's main in this process (a new interpreter would add 6 s of CPU for its
    imports; its own torchrun check still starts one); the wrapper is tested below."""
    code = gpu_check.main(["--device", "cpu"])
    out, err = capsys.readouterr()
    assert code == 0, (out + err)[-5000:]
    rows = {
        line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1]
        for line in out.splitlines()
        if line.startswith("| ") and line.count(" | ") == 3 and "---" not in line
    }
    rows.pop("path", None)
    assert rows["dataset.loader=gpu"] == "skip"  # the CUDA-only paths say so
    for path in ("fp32", "fp16 injected overflow", "SAM variant gsam", "ImageFolder"):
        assert rows[path] == "ok", rows
    assert rows["torchrun 1 process, DDP + FSDP"] == "ok"
    assert rows["bench --quick"] == "ok"  # with 0 host reads per step, or it fails
    assert "FAIL" not in rows.values(), rows


def test_the_wrapper_runs_gpu_check_py_from_the_repository_with_its_arguments(tmp_path):
    """gpu_check.sh from another folder: it changes to the repository and runs ``$PYTHON
    scripts/gpu_check.py ARGS`` (here a stand-in that prints its folder and arguments)."""
    python = tmp_path / "python"
    python.write_text('#!/bin/sh\necho "$PWD" "$@"\n')
    python.chmod(0o755)
    done = subprocess.run(
        [REPO / "scripts" / "gpu_check.sh", "--device", "cpu", "--only", "fp32"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHON": str(python)},
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    expected = [str(REPO), "scripts/gpu_check.py", "--device", "cpu", "--only", "fp32"]
    assert done.stdout.split() == expected
