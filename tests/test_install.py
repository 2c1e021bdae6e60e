"""`make install` on a system whose Python refuses pip installs (PEP 668) and has no uv.

No real install: ``make -n`` shows the plan, and the uv bootstrap recipe runs against a fake
``python3`` that records what it is asked to do.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(MAKE is None, reason="make is not installed")


def make(args: list[str], path: Path, **variables: str) -> subprocess.CompletedProcess:
    """``make ARGS`` in the repository with ``PATH=path`` (make itself by absolute path)."""
    assignments = [f"{name}={value}" for name, value in variables.items()]
    return subprocess.run(
        [MAKE, "-C", str(REPO), *args, *assignments],
        env={**os.environ, "PATH": str(path)},
        capture_output=True,
        text=True,
        timeout=60,
    )


def executable(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_without_uv_on_path_install_bootstraps_a_private_uv(tmp_path):
    plan = make(["-n", "-B", "install"], tmp_path)  # an empty PATH: no uv, no python3
    assert plan.returncode == 0, plan.stderr
    assert "python3 -m venv .uv-bootstrap" in plan.stdout
    assert ".uv-bootstrap/bin/uv sync --frozen --all-extras --compile-bytecode" in plan.stdout
    assert "python3 -m pip install" not in plan.stdout  # the PEP 668-refused command


def test_uv_on_path_is_used_and_nothing_is_bootstrapped(tmp_path):
    uv = executable(tmp_path / "bin" / "uv", "exit 0\n")
    plan = make(["-n", "-B", "install"], uv.parent)
    assert plan.returncode == 0, plan.stderr
    assert f"{uv} sync --frozen --all-extras --compile-bytecode" in plan.stdout
    assert ".uv-bootstrap" not in plan.stdout


def fake_python(tmp_path: Path, *, ensurepip: bool, pip: bool) -> tuple[Path, Path]:
    """A ``python3`` that makes venvs (with pip only if ``ensurepip``), logging each call;
    ``-m pip ... install uv`` puts a ``uv`` into the environment it is pointed at."""
    log = tmp_path / "calls.log"
    script = f"""echo "$0 $*" >> {log}
case "$*" in
  "-m venv --clear --without-pip "*) mkdir -p "$5/bin"; ln -sf "$0" "$5/bin/python"; exit 0 ;;
  "-m venv "*) {"" if ensurepip else "exit 1"}
    mkdir -p "$3/bin"; ln -sf "$0" "$3/bin/python"; exit 0 ;;
  "-m pip --version") exit {0 if pip else 1} ;;
  "-m pip --python "*" install "*) env="$(dirname "$4")" ;;
  "-m pip install "*) env="$(dirname "$0")" ;;
  *) exit 1 ;;
esac
printf '#!/bin/sh\\n' > "$env/uv"; chmod +x "$env/uv"
"""
    return executable(tmp_path / "system" / "python3", script), log


def bootstrap(tmp_path: Path, python: Path) -> subprocess.CompletedProcess:
    target = tmp_path / "boot"
    variables = {"PYTHON": str(python), "UV_BOOTSTRAP": str(target)}
    return make([f"{target}/bin/uv"], Path("/usr/bin:/bin"), **variables)


def test_bootstrap_installs_uv_inside_its_own_venv(tmp_path):
    python, log = fake_python(tmp_path, ensurepip=True, pip=True)
    done = bootstrap(tmp_path, python)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert calls[0] == f"{python} -m venv {tmp_path}/boot"
    venv_python = tmp_path / "boot" / "bin" / "python"
    assert calls[1].endswith(" -m pip install --quiet --disable-pip-version-check uv")
    assert os.path.samefile(venv_python, python) and (tmp_path / "boot/bin/uv").exists()


def test_bootstrap_without_ensurepip_uses_the_system_pip_into_the_venv(tmp_path):
    python, log = fake_python(tmp_path, ensurepip=False, pip=True)
    done = bootstrap(tmp_path, python)
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    assert f"{python} -m pip --python {tmp_path}/boot/bin/python install --quiet uv" in calls
    assert not any(" -m pip install" in call for call in calls)
    assert (tmp_path / "boot/bin/uv").exists()


def test_bootstrap_without_venv_or_pip_says_what_to_install(tmp_path):
    python, _log = fake_python(tmp_path, ensurepip=False, pip=False)
    done = bootstrap(tmp_path, python)
    assert done.returncode != 0
    assert "install uv" in done.stderr and "python3-venv" in done.stderr
