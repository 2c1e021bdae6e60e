"""``Trainer.fit``: the epoch loop, evaluation and best-metric tracking, nothing else.

Checkpoints, signals, console lines, TensorBoard and results.json are callbacks
(:mod:`sam_train.callbacks`); the two-pass step is :class:`sam_train.step.SAMStep`. One step
reads top to bottom: ``run.step(images, targets)``, the schedule's update, the callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sam_train.build import Run
from sam_train.callbacks.base import Callback
from sam_train.state import RunState
from sam_train.step import StepOutput, evaluate

LOWER_IS_BETTER = ("loss",)


@dataclass
class StopRequest:
    """Why the run stops early, and the exit code the entry point should use."""

    reason: str
    exit_code: int


class StopTraining(Exception):
    """Raised by :meth:`Trainer.fit` after a requested stop, once callbacks saved the run."""

    def __init__(self, request: StopRequest, global_step: int) -> None:
        super().__init__(f"{request.reason} at step {global_step}")
        self.request = request
        self.global_step = global_step


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
        started = time.perf_counter()
        for step, (images, targets) in enumerate(run.loaders.train, start=start_step + 1):
            output = run.step(images, targets)
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
                metrics["eta_seconds"] = remaining * metrics.pop("seconds_per_step") + evaluations
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
