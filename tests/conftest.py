"""Shared fixtures: Hydra compose, tiny on-disk data sets in their real formats, a CLI runner."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from sam_train.compose import compose_config
from sam_train.config import ConfigError, register_configs, validate
from sam_train.config.schema import VARIANT_OVERRIDES
from sam_train.data.synthetic import write_cifar, write_image_folder

REPO = Path(__file__).resolve().parents[1]
#: The smallest run the real factory builds: digits, a 4-channel CNN, batch 8, no workers.
TINY_RUN = [
    "trainer.device=cpu",
    "dataset=digits",
    "model.name=digits_cnn",
    "+model.kwargs.width=4",
    "trainer.batch_size=8",
    "trainer.num_workers=0",
]
# The tests' quick training run: the quickstart preset (digits, CPU) for two epochs, a few seconds.
QUICK = ["experiment=quickstart", "trainer.epochs=2", "scheduler.warmup_epochs=1"]
# The quick run the stop-and-resume tests compare bit for bit: dropout and label noise make a
# resumed run depend on every random draw being restored; a checkpoint after every step.
# 451 test images: shards of 226 and 225 for two processes, in 2 and 1 batches of 225.
RESUMABLE = [
    *QUICK,
    "trainer.log_every=1",
    "checkpoint.every_n_steps=1",
    "model.kwargs.drop_rate=0.2",
    "dataset.label_noise=0.2",
    "dataset.test_fraction=0.2505",
    "trainer.eval_batch_size=225",
]
register_configs()
# In-process runs use one thread like the child processes (subprocess_env): a resumed run is
# compared bit for bit with its reference, and thread counts change float reductions.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture
def compose_cfg():
    return compose_config


@pytest.fixture(scope="module")
def bench():
    """The ``scripts/bench`` package, imported as ``scripts/efficiency.py`` imports it."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        return importlib.import_module("bench")
    finally:
        sys.path.remove(str(REPO / "scripts"))


def config_refusal(overrides: list[str]) -> str:
    """The ConfigError that validating ``overrides`` raises; the test fails when none is
    raised or when the message takes more than one line (a user error is one clear line)."""
    with pytest.raises(ConfigError) as err:
        validate(compose_config(overrides))
    message = str(err.value)
    assert "\n" not in message, message
    return message


def build_cifar(root: Path, name: str = "cifar10", **options):
    """The data sets of a folder ``write_cifar`` wrote: no download, no checksums."""
    from sam_train.data import build_datasets

    options = {
        "num_classes": 10 if name == "cifar10" else 100,
        "download": False,
        "verify_checksums": False,
        **options,
    }
    return build_datasets(name, root=str(root), **options)


@pytest.fixture
def tiny_cifar10(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data", "cifar10")


@pytest.fixture
def tiny_cifar100(tmp_path: Path) -> Path:
    return write_cifar(tmp_path / "data", "cifar100")


@pytest.fixture
def tiny_imagenet(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "imagenet")


def subprocess_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a test's child process: this checkout importable, one thread.

    One thread: a second process on 2 shared cores makes threaded kernels spin-wait.
    """
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(extra or {})}


def sam_train_command(args: list[str]) -> list[str]:
    return [sys.executable, "-m", "sam_train", *args]


def torchrun_command(args: list[str], restarts: int = 0) -> list[str]:
    """``torchrun --standalone`` with two CPU workers; ``args`` as after torchrun's options."""
    return [sys.executable, "-m", "torch.distributed.run", *_torchrun_args(args, restarts)]


def _torchrun_args(args: list[str], restarts: int) -> list[str]:
    return ["--standalone", "--nproc_per_node=2", f"--max-restarts={restarts}", *args]


def start_torchrun(args: list[str], cwd: Path, restarts: int = 0) -> ForkedRun:
    """torchrun_command's launch with the agent in a forked child of this process (its
    imports, 2 s of CPU, are not paid again); the workers are new interpreters with the
    tests' child environment, as under a torchrun of their own."""

    def agent() -> None:
        from torch.distributed.run import main

        os.environ.update(subprocess_env())
        main(_torchrun_args(args, restarts))

    return ForkedRun(agent, cwd)


def torchrun(args: list[str], cwd: Path, restarts: int = 0) -> tuple[int, str]:
    """start_torchrun to its end: (exit code, the agent's and the workers' output)."""
    launch = start_torchrun(args, cwd, restarts)
    output = launch.communicate()
    return launch.returncode, output


@pytest.fixture(scope="session")
def two_process_run(tmp_path_factory) -> Path:
    """RESUMABLE under torchrun with two workers, launched once per test process (each launch
    is 15 s of CPU): test_distributed checks its run folder and test set, test_resume's
    stopped and restarted copies must end with its weights. Microseconds in the folder name:
    ranks resolving their own clock could never agree on it."""
    work = tmp_path_factory.mktemp("two_process")
    folder = "hydra.run.dir=outputs/q/${launch_time:%H-%M-%S-%f}"
    code, output = torchrun(["-m", "sam_train", *RESUMABLE, folder], work)
    assert code == 0, output[-5000:]
    (run,) = (work / "outputs" / "q").iterdir()
    return run


def run_cli(
    args: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m sam_train ARGS`` as a user would, in ``cwd``."""
    return run_process(sam_train_command(args), cwd, timeout, env)


def run_process(
    command: list[str], cwd: Path, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``command`` in ``cwd`` with the tests' child environment; its output as text."""
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=subprocess_env(env)
    )


@pytest.fixture
def cli():
    return run_cli


def run_in_process(args: list[str]) -> tuple[int, str]:
    """Run ``sam-train ARGS`` through the real entry point in this process (no start-up
    cost); returns (exit code, stderr)."""
    import contextlib
    import io

    from sam_train import cli as cli_module

    stderr = io.StringIO()
    saved_argv = sys.argv
    sys.argv = ["sam-train", *args]
    try:
        with contextlib.redirect_stderr(stderr):
            cli_module.main()
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = saved_argv
    return code, stderr.getvalue()


@pytest.fixture
def cli_in_process():
    return run_in_process


class ForkedRun:
    """``fn()`` in a forked child of this test process, its stdout and stderr on one pipe
    (``.stdout``): a real process (its own signals, exit code and global state) that skips a
    new interpreter's imports, 6 s of CPU for sam-train. ``fn``'s SystemExit is the exit
    code; ``returncode`` is -N for a child killed by signal N, as ``subprocess.Popen`` says.
    ``stderr_only``: stdout goes to /dev/null; ``new_session``: as Popen's
    ``start_new_session`` (a signal sent to the child reaches it alone)."""

    def __init__(
        self,
        fn: Callable[[], object],
        cwd: Path,
        *,
        stderr_only: bool = False,
        new_session: bool = False,
    ) -> None:
        read_end, write_end = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()  # or the child would write this process's buffers again
        self.pid = os.fork()
        if self.pid == 0:
            os.close(read_end)
            if new_session:
                os.setsid()
            stdout = os.open(os.devnull, os.O_WRONLY) if stderr_only else write_end
            _forked_child(fn, cwd, stdout, write_end)
        os.close(write_end)
        self.stdout = os.fdopen(read_end, "r", errors="replace")
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self) -> int:
        if self.returncode is None:
            self.returncode = os.waitstatus_to_exitcode(os.waitpid(self.pid, 0)[1])
        return self.returncode

    def communicate(self, timeout: float = 600) -> str:
        """The rest of the output once the child has ended; a guard against a hang only: past
        ``timeout`` seconds the child is killed and TimeoutError raised."""
        rest: list[str] = []
        reader = threading.Thread(target=lambda: rest.append(self.stdout.read()), daemon=True)
        reader.start()
        reader.join(timeout)
        if reader.is_alive():
            self.kill()
            raise TimeoutError(f"the forked run was still writing after {timeout} s")
        self.stdout.close()
        self.wait()
        return rest[0]


def _forked_child(fn: Callable[[], object], cwd: Path, stdout: int, stderr: int) -> None:
    """The child's side: its output to the given descriptors, ``fn()``, then ``os._exit``
    without the test process's exit handlers (pytest's and its plugins' are the parent's)."""
    code = 1
    try:
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 (until _exit)
        sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
        os.chdir(cwd)
        try:
            fn()
            code = 0
        except SystemExit as stop:
            code = stop.code if isinstance(stop.code, int) else int(stop.code is not None)
        except BaseException:
            traceback.print_exc()
        logging.shutdown()  # the run's log handlers: flushed and closed
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def fork_cli(args: list[str], cwd: Path, **options: bool) -> ForkedRun:
    """``sam-train ARGS`` through its entry point in a forked child (see ForkedRun)."""

    def main() -> None:
        from sam_train import cli as cli_module

        sys.argv = ["sam-train", *args]
        cli_module.main()

    return ForkedRun(main, cwd, **options)


# (group, option) -> what else it needs to compose and build: options that apply to one kind
# of data only, and sam=bsam, which makes its own update over plain SGD.
REQUIRES = {
    ("augment", "cutout"): ["dataset=cifar10"],
    ("augment", "autoaugment"): ["dataset=cifar10"],
    **{("sam", name): list(needs) for name, needs in VARIANT_OVERRIDES.items()},
}


def _weight(item: pytest.Item) -> int:
    """0: torchrun launches (``distributed``), 1: other ``slow`` tests, 2: the rest."""
    if item.get_closest_marker("distributed"):
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the files with torchrun launches first, then those with other slow tests, each
    file's tests together (a stable sort: module fixtures run once per worker). Longest
    first balances workers: under ``make test``'s ``--dist worksteal`` the worker that runs
    out takes the quick tests off the end of the other's queue, so no long test starts last
    while the other worker idles."""
    rank: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        rank[path] = min(rank.get(path, 2), _weight(item))
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])
