"""History records Python floats per epoch, with real epoch indices, fresh per fit."""

from __future__ import annotations

import torch
from callback_harness import simulate_fit

from finetunekit.callbacks import CallbackList, History


def test_history_collects_floats_per_epoch() -> None:
    logs = [
        {"loss": 0.9, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.4},
        {"loss": 0.7, "accuracy": 0.6, "val_loss": 0.8, "val_accuracy": 0.5},
    ]
    _, cbl, _ = simulate_fit([], logs)
    history = cbl.history
    assert history.epoch == [0, 1]
    assert history.history == {
        "loss": [0.9, 0.7],
        "accuracy": [0.5, 0.6],
        "val_loss": [1.0, 0.8],
        "val_accuracy": [0.4, 0.5],
    }


def test_history_of_tensor_logs_holds_floats() -> None:
    history = History()
    cbl = CallbackList([history])
    cbl.on_train_begin()
    cbl.on_epoch_end(0, {"loss": torch.tensor(0.25, requires_grad=True) * 1})
    assert history.history["loss"] == [0.25]
    assert type(history.history["loss"][0]) is float


def test_initial_epoch_indices_and_reset_per_fit() -> None:
    history = History()
    simulate_fit([history], [{"loss": 1.0}, {"loss": 0.5}])
    assert history.epoch == [0, 1]
    simulate_fit([history], [{"loss": 0.4}, {"loss": 0.3}], initial_epoch=2)
    assert history.epoch == [2, 3]
    assert history.history == {"loss": [0.4, 0.3]}  # lists stay aligned with epoch
    assert "epochs=2" in repr(history)
