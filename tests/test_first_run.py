"""The first run on any CPU: sam-train picks torch's thread count, draws a progress bar in a
terminal and plain lines elsewhere, and keeps its ETA steady."""

from __future__ import annotations

import io
import logging
import os
import sys
from types import SimpleNamespace

import pytest
import torch

from sam_train.callbacks.progress import ConsoleProgress
from sam_train.state import RunState
from sam_train.strategy import cpu_threads
from sam_train.trainer import StepTime


@pytest.fixture
def machine(monkeypatch):
    """A machine of ``cores`` cores with a 1-minute load of ``load``."""

    def make(cores: int, load: float, machine_cores: int | None = None) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
        monkeypatch.setattr(os, "cpu_count", lambda: machine_cores or cores)
        monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))

    return make


@pytest.mark.parametrize(
    ("cores", "load", "environ", "threads"),
    [
        (2, 1.0, {}, 2),  # idle but for this process: every core
        (2, 2.0, {}, 1),  # one other busy process: one thread, no spin-waiting on its core
        (2, 6.3, {}, 1),  # a loaded machine: never below one
        (16, 1.0, {"LOCAL_WORLD_SIZE": "4"}, 4),  # four ranks of a torchrun share the cores
        (16, 5.0, {"LOCAL_WORLD_SIZE": "4"}, 3),  # one core busy elsewhere
        (16, 9.0, {"OMP_NUM_THREADS": "5"}, 5),  # the user's OMP_NUM_THREADS is taken as given
    ],
)
def test_thread_count_is_the_share_of_the_free_cores(machine, cores, load, environ, threads):
    machine(cores, load)
    assert cpu_threads.choose_cpu_threads(None, environ) == threads


def test_a_cpu_set_of_a_loaded_machine_is_used_whole(machine):
    """A SLURM job or container given 8 of 64 cores: the load is its neighbours', elsewhere."""
    machine(8, 60.0, machine_cores=64)
    assert cpu_threads.choose_cpu_threads(None, {}) == 8


def test_requested_thread_count_wins(machine):
    machine(2, 6.0)
    assert cpu_threads.choose_cpu_threads(3, {"OMP_NUM_THREADS": "1"}) == 3


def test_run_strategy_sets_the_threads_on_the_cpu(compose_cfg):
    from sam_train.build import run_strategy

    cfg = compose_cfg(["trainer.device=cpu", "trainer.cpu_threads=2"])
    try:
        run_strategy(cfg)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_eta_does_not_swing_with_the_windows():
    """Windows as measured on a loaded 2-core machine (s/step): the first holds the loader's
    start; then one step in five is slowed by other work."""
    clock = StepTime()
    assert clock.update(3.0, first_window=True) == 3.0  # provisional
    assert clock.update(0.10) == 0.10  # replaced by the first typical window
    estimates = [clock.update(s) for s in (0.12, 0.9, 0.08, 0.11, 2.5, 0.10, 0.09)]
    ratios = [b / a for a, b in zip([0.10, *estimates], estimates, strict=False)]
    assert max(ratios) < 2 and min(ratios) > 0.5, estimates
    steady = StepTime()
    for _ in range(30):
        value = steady.update(0.2)
    assert value == pytest.approx(0.2)


def _epoch(progress: ConsoleProgress, steps_per_epoch: int = 4, log_every: int = 2):
    """The events of one epoch's steps as Trainer.fit sends them; returns (trainer, state)."""
    strategy = SimpleNamespace(is_main=True)
    run = SimpleNamespace(strategy=strategy, steps_per_epoch=steps_per_epoch, epochs=2)
    trainer, state = SimpleNamespace(run=run), RunState()
    progress.on_fit_start(trainer, state)
    for step in range(1, steps_per_epoch + 1):
        state.global_step += 1
        if step % log_every == 0:
            metrics = {"epoch": 0, "step": step, "train/loss": 1.5, "lr": 0.1}
            metrics.update({"throughput/images_per_sec": 100.0, "eta_seconds": 65.0})
            progress.on_log(trainer, state, metrics)
        progress.on_train_step_end(trainer, state, None)
    return trainer, state


def _end(progress: ConsoleProgress, trainer, state) -> None:
    state.train_metrics = {"loss": 1.2, "acc1": 50.0}
    state.test_metrics = {"loss": 1.1, "acc1": 60.0, "acc5": 90.0, "count": 10}
    progress.on_epoch_end(trainer, state, True)
    progress.teardown(trainer, state)


@pytest.fixture
def log_file(tmp_path):
    """train.log as Hydra sets it up: a file handler on the root logger."""
    handler = logging.FileHandler(tmp_path / "train.log")
    root = logging.getLogger()
    root.addHandler(handler)
    old_level, root.level = root.level, logging.INFO
    yield tmp_path / "train.log"
    root.removeHandler(handler)
    handler.close()
    root.setLevel(old_level)


def test_terminal_gets_a_bar_and_the_log_file_the_lines(capsys, caplog, log_file):
    progress = ConsoleProgress("a run", bar=True)
    trainer, state = _epoch(progress)
    assert progress.bar.n == progress.bar.total == 4  # tqdm's bar, on stderr
    assert "eta 0:01:05" in progress.bar.postfix  # the log line's figures beside it
    _end(progress, trainer, state)
    assert progress.bar is None  # closed at the epoch's end
    assert "epoch 1/2" in capsys.readouterr().err
    progress_lines = [r for r in caplog.records if "step 2/4" in r.getMessage()]
    assert not progress_lines, "in a terminal the bar replaces the console lines"
    text = log_file.read_text()
    assert "step 2/4  loss 1.5" in text and "step 4/4" in text  # the file keeps them
    assert "test acc1 60.00" in text  # the epoch's summary: everywhere


def test_no_terminal_gets_plain_lines(capsys, caplog, log_file):
    progress = ConsoleProgress("a run", bar=None)  # pytest's streams are not terminals
    _end(progress, *_epoch(progress))
    assert "step/s" not in capsys.readouterr().err
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("epoch 1/2  step 2/4  loss 1.5") for line in lines), lines
    assert "step 4/4" in log_file.read_text()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("stdout_tty", "stderr_tty", "bar"), [(1, 1, True), (1, 0, False), (0, 1, False)]
)
def test_the_bar_needs_both_streams_on_a_terminal(monkeypatch, stdout_tty, stderr_tty, bar):
    monkeypatch.setattr(sys, "stdout", _Terminal() if stdout_tty else io.StringIO())
    monkeypatch.setattr(sys, "stderr", _Terminal() if stderr_tty else io.StringIO())
    progress = ConsoleProgress("a run")
    trainer, state = _epoch(progress)
    assert (progress.bar is not None) == bar
    _end(progress, trainer, state)
