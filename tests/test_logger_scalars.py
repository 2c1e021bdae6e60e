"""The scalars every logger hears at an epoch's end and at the run's end, read from the state."""

from __future__ import annotations

from types import SimpleNamespace

from sam_train.callbacks.loggers import epoch_scalars, final_scalars


def _state(ema: bool) -> SimpleNamespace:
    test = {"loss": 0.9, "acc1": 0.6, "acc5": 0.95}
    if ema:
        test |= {"ema_loss": 0.8, "ema_acc1": 0.61}
    return SimpleNamespace(
        train_metrics={"acc1": 0.5, "loss": 1.2}, test_metrics=test, best={"acc1": 0.7}
    )


def test_an_epoch_names_its_train_test_best_and_ema_values():
    state = _state(ema=True)
    scalars = epoch_scalars(state)
    assert scalars["train/acc1"] == state.train_metrics["acc1"]
    assert scalars["train/epoch_loss"] == state.train_metrics["loss"]
    for key in ("loss", "acc1", "acc5"):
        assert scalars[f"test/{key}"] == state.test_metrics[key]
    assert scalars["best/acc1"] == state.best["acc1"]
    assert scalars["test_ema/acc1"] == state.test_metrics["ema_acc1"]
    assert scalars["test_ema/loss"] == state.test_metrics["ema_loss"]
    assert "test_ema/acc1" not in epoch_scalars(_state(ema=False))


def test_the_final_scalars_are_the_last_epochs_renamed_in_their_order():
    state = _state(ema=True)
    epoch, final = epoch_scalars(state), final_scalars(state)
    order = ["final/acc1", "best/acc1", "final/acc5", "final/loss", "final/train_loss"]
    assert list(final)[:5] == order  # the rows of scalars.csv's last step, as before
    assert final["final/acc1"] == epoch["test/acc1"]
    assert final["final/acc5"] == epoch["test/acc5"]
    assert final["final/loss"] == epoch["test/loss"]
    assert final["final/train_loss"] == epoch["train/epoch_loss"]
    assert final["best/acc1"] == epoch["best/acc1"]
    assert final["final_ema/acc1"] == state.test_metrics["ema_acc1"]
