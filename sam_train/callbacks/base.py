"""The events a :class:`~sam_train.trainer.Trainer` sends to its callbacks.

Every method is a no-op here: a callback overrides the events it needs. A feature such as
model EMA is one subclass plus its config (``on_train_step_end`` after the base step, its
own ``state_dict`` in the checkpoint), with no edit of the loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.step import StepOutput
    from sam_train.trainer import Trainer


class Callback:
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
