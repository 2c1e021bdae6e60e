"""``Trainer.fit``: the epoch loop, evaluation and best-metric tracking, nothing else.

Checkpoints, signals, console lines, TensorBoard and results.json are callbacks
(:mod:`sam_train.callbacks`); the two-pass step is :class:`sam_train.step.SAMStep`. One step
reads top to bottom: ``run.step(images, targets)``, the schedule's update, the callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from sam_train.errors import StopRequest, StopTraining
from sam_train.run import Run
from sam_train.state import RunState
from sam_train.step import StepOutput, evaluate

LOWER_IS_BETTER = ("loss",)


class Callback:
    """The events :class:`Trainer` sends; every method is a no-op here.

    A feature such as model EMA is one subclass plus its config (``on_train_step_end`` after
    the base step, its own ``state_dict`` in the checkpoint), with no edit of the loop. The
    trainer defines the events and never imports a callback (:mod:`sam_train.callbacks`).
    """

    #: The callback's key in a checkpoint (``checkpoint["callbacks"][state_key]``): a stable
    #: name of its own, set by every callback whose ``state_dict`` is not None, so a renamed
    #: class still resumes its old checkpoints.
    state_key: ClassVar[str | None] = None

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        """Before the first step of this session (fresh or resumed)."""

    def on_train_step_end(self, trainer: Trainer, state: RunState, output: StepOutput) -> None:
        """After every optimizer step (the weights are w again, never w + eps)."""

    def on_log(self, trainer: Trainer, state: RunState, metrics: dict[str, float]) -> None:
        """Every ``log_every`` steps and at an epoch's last step: this window's metrics."""

    def on_evaluate(self, trainer: Trainer, state: RunState) -> None:
        """After the live model's evaluation, before best tracking: add other models' test
        metrics to ``state.test_metrics`` (the EMA's ``ema_acc1``, which
        ``checkpoint.best_metric`` may name)."""

    def on_epoch_end(self, trainer: Trainer, state: RunState, is_best: bool) -> None:
        """After an epoch's evaluation; ``state`` holds its train and test metrics."""

    def on_checkpoint(self, trainer: Trainer, state: RunState) -> None:
        """A checkpoint of ``state`` is about to be written (sent by the checkpointing
        callback, on every process): put on disk what it covers that is not there yet (a
        logger's rows), so that a SIGKILL right after it loses nothing a resume will not redo."""

    def on_stop(self, trainer: Trainer, state: RunState) -> None:
        """A stop was requested (signal): the run ends after this, to be resumed."""

    def on_fit_end(self, trainer: Trainer, state: RunState) -> None:
        """Every configured epoch is done."""

    def teardown(self, trainer: Trainer, state: RunState) -> None:
        """Always, on every exit path: release what ``on_fit_start`` took."""

    def summary(self, state: RunState) -> dict[str, Any]:
        """Values this callback adds to results.json (at the run's end)."""
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        """What this callback must carry across a resume (None: nothing)."""
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


class Trainer:
    def __init__(
        self,
        run: Run,
        callbacks: Sequence[Callback] = (),
        *,
        best_metric: str = "acc1",
        log_every: int = 50,
    ) -> None:
        self.run = run
        self.callbacks = list(callbacks)
        self.best_metric = best_metric
        self.log_every = log_every
        self.stop_request: StopRequest | None = None
        self.step_time = StepTime()  # the ETA's seconds per step, across epochs

    def _emit(self, event: str, *args: object) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def request_stop(self, reason: str, exit_code: int) -> None:
        """Stop after the current step (every process must call it at the same step)."""
        self.stop_request = StopRequest(reason, exit_code)

    def fit(self, state: RunState) -> RunState:
        """Train from ``state.global_step`` to the last epoch; returns the final state."""
        run = self.run
        try:
            self._emit("on_fit_start", state)
            start_epoch, skip = divmod(state.global_step, run.steps_per_epoch)
            for epoch in range(start_epoch, run.epochs):
                self._train_epoch(state, epoch, skip if epoch == start_epoch else 0)
                run.scheduler.step(epoch + 1)
                evaluation_started = time.perf_counter()
                state.test_metrics = self.evaluate()
                self._emit("on_evaluate", state)  # other models' scores (EMA), before best
                # Every evaluation of the epoch (EMA's too), for the ETA and metrics.csv.
                state.test_metrics["seconds"] = time.perf_counter() - evaluation_started
                is_best = self._update_best(state, epoch)
                state.complete = epoch + 1 == run.epochs  # before the epoch's checkpoint
                self._emit("on_epoch_end", state, is_best)
                if not state.complete:
                    self._stop_if_requested(state)
            state.complete = True
            self._emit("on_fit_end", state)
        finally:
            self._emit("teardown", state)
        return state

    def _stop_if_requested(self, state: RunState) -> None:
        if self.stop_request is not None:
            self._emit("on_stop", state)
            raise StopTraining(self.stop_request, state.global_step)

    def evaluate(self) -> dict[str, float]:
        run = self.run
        return evaluate(
            run.train_model,
            run.loaders.test,
            run.device,
            strategy=run.strategy,
            precision=run.precision,
            channels_last=run.step.channels_last,
        )

    def _train_epoch(self, state: RunState, epoch: int, start_step: int) -> None:
        """One pass over the training loader, from ``start_step`` (a resumed run's position)."""
        run = self.run
        run.loaders.train_sampler.set_epoch(epoch, skip=start_step * run.per_device_batch)
        run.train_model.train()
        device = run.device
        totals = torch.zeros(3, device=device, dtype=torch.float64)  # loss, correct, count
        window = _Window(device)
        first_window = True  # holds the loader's start (workers): not a typical step
        started = time.perf_counter()
        for step, (images, targets, *indices) in enumerate(run.loaders.train, start=start_step + 1):
            output = run.step(images, targets, *indices)  # indices: SAF's loader only
            state.global_step += 1
            run.scheduler.step_update(num_updates=state.global_step)
            totals[0] += output.loss_sum.double()
            totals[1] += output.correct.double()
            totals[2] += output.count
            window.add(output)
            if step % self.log_every == 0 or step == run.steps_per_epoch:
                # The step counts skipped (non-finite) steps on the device; read them here.
                state.skipped_steps += run.step.nonfinite.check()
                metrics = window.read(run.optimizer.param_groups[0]["lr"])
                remaining = (run.epochs - epoch) * run.steps_per_epoch - step
                # Every remaining epoch ends with an evaluation as long as the last one took
                # (known from the first evaluation on, also after a resume: it is in the state).
                evaluations = (run.epochs - epoch) * state.test_metrics.get("seconds", 0.0)
                per_step = self.step_time.update(metrics.pop("seconds_per_step"), first_window)
                metrics["eta_seconds"] = remaining * per_step + evaluations
                first_window = False
                metrics["epoch"], metrics["step"] = epoch, step
                self._emit("on_log", state, metrics)
            self._emit("on_train_step_end", state, output)
            if step < run.steps_per_epoch:  # at the last step, the epoch's end comes first
                self._stop_if_requested(state)
        seconds = time.perf_counter() - started
        loss, correct, count = run.strategy.all_reduce_sum(totals).tolist()
        state.images_seen += int(count)
        state.train_seconds += seconds
        state.train_metrics = {
            "loss": loss / max(count, 1.0),
            "acc1": 100.0 * correct / max(count, 1.0),
            "images_per_sec": count / max(seconds, 1e-9),
            "epoch_seconds": seconds,  # this session's part of the epoch after a resume
        }

    def _update_best(self, state: RunState, epoch: int) -> bool:
        """Track ``best_metric`` (a key of ``state.test_metrics``: ``acc1``, ``ema_acc1``, ...);
        the best epoch's test metrics are kept whole."""
        test = state.test_metrics
        value, best = test[self.best_metric], state.best.get(self.best_metric)
        lower = self.best_metric.endswith(LOWER_IS_BETTER)
        if best is not None and (value >= best if lower else value <= best):
            return False
        state.best = {key: value for key, value in test.items() if key != "count"}
        state.best["epoch"] = epoch
        return True


class _Window:
    """This process's training loss and throughput since the last log line."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), device=device)
        self.count, self.steps, self.start = 0, 0, time.perf_counter()
        self.grad_norm: torch.Tensor | None = None

    def add(self, output: StepOutput) -> None:
        self.loss += output.loss_sum
        self.count += output.count
        self.steps += 1
        self.grad_norm = output.grad_norm

    def read(self, lr: float) -> dict[str, float]:
        """The window's metrics (one host sync), then start a new window."""
        elapsed = time.perf_counter() - self.start
        metrics = {
            "train/loss": self.loss.item() / max(self.count, 1),
            "lr": lr,
            "throughput/images_per_sec": self.count / max(elapsed, 1e-9),
            "seconds_per_step": elapsed / max(self.steps, 1),
        }
        if self.grad_norm is not None:
            metrics["sam/grad_norm"] = float(self.grad_norm.item())
        self.loss.zero_()
        self.count, self.steps, self.start = 0, 0, time.perf_counter()
        return metrics


class StepTime:
    """Seconds per step for the ETA, smoothed over log windows so that one slow window (other
    processes taking the cores, a loader starting its workers) moves the ETA by less than 2x:
    an exponential moving average whose samples are clipped to within ``CLIP`` times the
    estimate. The run's first window (the loader starting, the first steps' warm-up) only gives
    a first estimate, which the next window replaces."""

    WEIGHT = 0.3
    CLIP = 4.0

    def __init__(self) -> None:
        self.value: float | None = None
        self.provisional = True

    def update(self, seconds: float, first_window: bool = False) -> float:
        """Add a window's seconds per step; returns the estimate."""
        if self.value is None or self.provisional:
            self.provisional = self.value is None and first_window
            self.value = seconds
        else:
            sample = min(max(seconds, self.value / self.CLIP), self.value * self.CLIP)
            self.value += self.WEIGHT * (sample - self.value)
        return self.value
