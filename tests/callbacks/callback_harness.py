"""A fake tuner and a loop that drives callback hooks the way FineTuner.fit does, without training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from finetunekit.callbacks import Callback, CallbackList


class FakeTuner:
    """What callbacks may rely on: ``model`` (an nn.Module) and ``stop_training``."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Linear(4, 3)
        self.stop_training = False


def simulate_fit(
    callbacks: Sequence[Callback],
    epoch_logs: Sequence[dict[str, Any]],
    tuner: FakeTuner | None = None,
    steps: int = 3,
    initial_epoch: int = 0,
    verbose: int = 0,
) -> tuple[FakeTuner, CallbackList, list[dict[str, torch.Tensor]]]:
    """Run ``len(epoch_logs)`` epochs; each batch moves the weights, so every epoch's weights differ.

    Returns the tuner, the CallbackList and a snapshot of the weights at the end of each epoch run.
    """
    tuner = tuner or FakeTuner()
    tuner.stop_training = False
    epochs = initial_epoch + len(epoch_logs)
    cbl = CallbackList(
        callbacks,
        tuner=tuner,
        add_history=True,
        add_progbar=verbose != 0,
        verbose=verbose,
        epochs=epochs,
        steps=steps,
    )
    snapshots: list[dict[str, torch.Tensor]] = []
    cbl.on_train_begin()
    for i, logs in enumerate(epoch_logs):
        epoch = initial_epoch + i
        cbl.on_epoch_begin(epoch)
        for batch in range(steps):
            cbl.on_train_batch_begin(batch)
            with torch.no_grad():
                for p in tuner.model.parameters():
                    p.mul_(0.9).add_(0.01 * (epoch + 1))
            cbl.on_train_batch_end(batch, {"loss": float(logs.get("loss", 1.0))})
        cbl.on_epoch_end(epoch, dict(logs))
        snapshots.append({k: v.detach().clone() for k, v in tuner.model.state_dict().items()})
        if tuner.stop_training:
            break
    cbl.on_train_end()
    return tuner, cbl, snapshots


def val_losses(*values: float) -> list[dict[str, float]]:
    return [{"loss": 1.0, "val_loss": v} for v in values]
