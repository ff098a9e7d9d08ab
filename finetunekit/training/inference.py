"""``evaluate`` and ``predict`` on prepared data: this rank's shard, the measured weights (optionally with
flip TTA), and the same :class:`~finetunekit.training.compute.Compute` training uses."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.callbacks import Callback, CallbackList
from finetunekit.callbacks.progbar import num_steps
from finetunekit.data import PreparedData
from finetunekit.training import loop
from finetunekit.training.compute import Compute
from finetunekit.training.tta import FlipTTA


def evaluate(
    model: nn.Module, data: PreparedData, dist: Any, batch_size: int, *, owner: Any, compute: Compute,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], metrics: Any,
    callbacks: Sequence[Callback], tta: bool, verbose: int = 0,
) -> dict[str, float]:  # fmt: skip
    """Loss and metrics as Python floats; under DDP each rank evaluates its shard and sums are reduced."""
    loader = dist.eval_loader(data, batch_size)
    cbs = CallbackList(
        list(callbacks), tuner=owner, add_progbar=True, verbose=verbose, steps=num_steps(loader)
    )  # fmt: skip  (verbose=1: a bar, 2: one line at the end)
    model = FlipTTA(model) if tta else model
    return loop.evaluate_loader(model, loader, loss_fn, metrics, compute.device, cbs,
                                sync_metrics=dist.active, compute=compute)  # fmt: skip


def predict(
    model: nn.Module, data: PreparedData, dist: Any, batch_size: int, *, owner: Any, compute: Compute,
    num_classes: int, callbacks: Sequence[Callback], tta: bool, verbose: int = 0,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:  # fmt: skip
    """``activation`` of the outputs (softmax by default; the task's, finetunekit.tasks), (N, num_classes)
    in input order; under DDP gathered from every rank's shard."""
    loader = dist.eval_loader(data, batch_size)
    cbs = CallbackList(
        list(callbacks), tuner=owner, add_progbar=True, verbose=verbose, steps=num_steps(loader)
    )  # fmt: skip  (verbose=1: a bar, 2: one line at the end)
    model = FlipTTA(model) if tta else model
    probs = loop.predict_loader(model, loader, compute.device, cbs, compute=compute, activation=activation)
    return dist.gather_rows(probs.reshape(-1, num_classes), data)
