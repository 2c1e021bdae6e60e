"""Model EMA: timm's ``ModelEmaV3`` of the weights after each base step, scored every epoch.

SAM's step moves the weights to w + eps and back inside the step; ``on_train_step_end``
comes after ``optimizer.restore`` and the base step, so the EMA only ever averages the
weights the base optimizer produced, never the perturbed ones. Parameters and floating
buffers (norm statistics) are averaged alike, as ``ModelEmaV3`` does by default.

Under DDP every process keeps the EMA of its own ``run.model``: the parameters are the same
on every rank, so their EMAs are too; the norm statistics differ between evaluations and are
averaged over ranks when the EMA is evaluated (as the live model's are), which also makes
the EMA state that an epoch-end checkpoint saves (rank 0's) that of every rank. A mid-epoch
checkpoint under DDP saves rank 0's EMA norm statistics for every rank.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from timm.utils.model_ema import ModelEmaV3

from sam_train import checkpoint
from sam_train.step import evaluate
from sam_train.trainer import Callback

if TYPE_CHECKING:
    from sam_train.state import RunState
    from sam_train.step import StepOutput
    from sam_train.trainer import Trainer

log = logging.getLogger("sam_train")
EMA_METRICS = ("loss", "acc1", "acc5")  # scored as ema_<name>, logged as test_ema/<name>


class ModelEMA(Callback):
    """The EMA of ``run.model``, updated after every optimizer step, evaluated every epoch.

    ``state_dict()[EMA_WEIGHTS]`` is the EMA model's ``state_dict()`` (the live model's keys),
    which :func:`sam_train.checkpoint.ema_weights` reads back.
    """

    state_key = checkpoint.EMA

    def __init__(self, decay: float, *, warmup: bool = False, warmup_power: float = 2 / 3):
        self.decay, self.warmup, self.warmup_power = decay, warmup, warmup_power
        self.ema: ModelEmaV3 | None = None
        self._restored: dict[str, Any] | None = None  # a checkpoint's state, until fit starts
        self.best_acc1: float | None = None
        self.best_epoch = -1

    def on_fit_start(self, trainer: Trainer, state: RunState) -> None:
        """Copy the model now: a resumed run's weights are loaded after the callbacks are made."""
        self.ema = ModelEmaV3(
            trainer.run.model,
            decay=self.decay,
            use_warmup=self.warmup,
            warmup_power=self.warmup_power,
        )
        if self._restored is not None:
            self._apply_restored()
        elif state.global_step:
            log.warning(
                "the checkpoint holds no EMA: the EMA starts from the resumed weights at step %d",
                state.global_step,
            )

    def on_train_step_end(self, trainer: Trainer, state: RunState, output: StepOutput) -> None:
        # The step counts updates from 1: timm's first update copies the weights (decay 0),
        # and its warm-up follows the run's position, so a resumed run continues it exactly.
        self.ema.update(trainer.run.model, step=state.global_step)

    def on_evaluate(self, trainer: Trainer, state: RunState) -> None:
        run = trainer.run
        scores = evaluate(
            self.ema.module,
            run.loaders.test,
            run.device,
            strategy=run.strategy,
            precision=run.precision,
            channels_last=run.step.channels_last,
        )
        state.test_metrics.update({f"ema_{name}": scores[name] for name in EMA_METRICS})
        if self.best_acc1 is None or scores["acc1"] > self.best_acc1:
            self.best_acc1 = scores["acc1"]
            self.best_epoch = state.epoch(run.steps_per_epoch) - 1

    def summary(self, state: RunState) -> dict[str, Any]:
        return {
            "ema_decay": self.decay,
            "ema_final_acc1": state.test_metrics.get("ema_acc1"),
            "ema_best_acc1": self.best_acc1,
            "ema_best_epoch": self.best_epoch + 1,
        }

    def state_dict(self) -> dict[str, Any] | None:
        if self.ema is None:
            return self._restored
        return {
            checkpoint.EMA_WEIGHTS: self.ema.module.state_dict(),
            "best_acc1": self.best_acc1,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._restored = state
        if self.ema is not None:
            self._apply_restored()

    def _apply_restored(self) -> None:
        assert self.ema is not None and self._restored is not None
        self.ema.module.load_state_dict(self._restored[checkpoint.EMA_WEIGHTS])
        self.best_acc1 = self._restored.get("best_acc1")
        self.best_epoch = self._restored.get("best_epoch", -1)
        self._restored = None
