"""The training, evaluation and prediction passes. Small functions the tuner calls, so the loop reads
top to bottom and device, precision and logging details stay out of it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.callbacks import CallbackList
from finetunekit.metrics import MetricTracker
from finetunekit.optim import set_frozen_norms_to_eval, write_lrs
from finetunekit.strategies import Plan

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LOG_EVERY = 10  # batch logs are synced from the device at most this often


@dataclass
class TrainContext:
    """Everything one epoch of training needs, gathered once per fit."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: Callable[[float], float]
    base_lr: float
    metrics: list[str]
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    train_bn: bool
    norms_by_group: list[list[nn.Module]] = field(default_factory=list)
    regularizer: Callable[[], torch.Tensor] | None = None  # e.g. L2SP: added to the loss for backward
    batch_transform: BatchTransform | None = None  # e.g. mixup: (x, y) -> (x, soft targets) before forward


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Loaders yield (images, labels); a user's DataLoader may yield lists or bare images."""
    if isinstance(batch, (list, tuple)):
        x, y = batch[0], batch[1] if len(batch) > 1 else torch.full((len(batch[0]),), -1)
    else:
        x, y = batch, torch.full((len(batch),), -1)
    nb = device.type == "cuda"
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)


def train_epoch(
    ctx: TrainContext, loader: Iterable[Any], epoch: int, plan: Plan, callbacks: CallbackList, tuner: Any
) -> dict[str, float]:
    """One pass over the training data: forward, loss, backward, step; LRs written before each step."""
    ctx.model.train()
    set_frozen_norms_to_eval(plan, ctx.norms_by_group, ctx.train_bn)
    tracker = MetricTracker(ctx.metrics, ctx.device)
    batch_logs: dict[str, float] = {}
    step = -1
    for step, batch in enumerate(loader):
        callbacks.on_train_batch_begin(step)
        global_step = epoch * ctx.steps_per_epoch + step
        multiplier = ctx.schedule(global_step / max(1, ctx.total_steps))
        write_lrs(ctx.optimizer, ctx.base_lr, multiplier, plan)
        x, y = to_device(batch, ctx.device)
        xin, target = ctx.batch_transform(x, y) if ctx.batch_transform is not None else (x, y)
        loss, logits = train_step(ctx, xin, target)
        tracker.update(loss, logits, y)
        if step % LOG_EVERY == 0:
            batch_logs = tracker.result()
        callbacks.on_train_batch_end(step, batch_logs)
        if tuner.stop_training:
            break
    logs = tracker.result()
    logs["lr"] = ctx.base_lr * ctx.schedule(
        min(1.0, (epoch * ctx.steps_per_epoch + step + 1) / max(1, ctx.total_steps))
    )
    return logs


def train_step(ctx: TrainContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on one batch; returns the detached loss and logits for metrics."""
    logits = ctx.model(x)
    loss = ctx.loss_fn(logits, y)
    penalty = ctx.regularizer() if ctx.regularizer is not None else 0.0
    ctx.optimizer.zero_grad(set_to_none=True)
    (loss + penalty).backward()
    ctx.optimizer.step()
    _step_torch_scheduler(ctx.schedule)
    return loss.detach(), logits.detach()


def _step_torch_scheduler(schedule: Callable[[float], float]) -> None:
    step = getattr(schedule, "step", None)
    if step is not None:
        step()


@torch.no_grad()
def evaluate_loader(
    model: nn.Module,
    loader: Iterable[Any],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    metrics: list[str],
    device: torch.device,
    callbacks: CallbackList,
) -> dict[str, float]:
    """Mean loss and metrics over a labelled loader, in eval mode; restores the model's mode after."""
    was_training = model.training
    model.eval()
    tracker = MetricTracker(metrics, device)
    callbacks.on_test_begin()
    for step, batch in enumerate(loader):
        callbacks.on_test_batch_begin(step)
        x, y = to_device(batch, device)
        logits = model(x)
        tracker.update(loss_fn(logits, y), logits, y)
        callbacks.on_test_batch_end(step)
    logs = tracker.result()
    callbacks.on_test_end(logs)
    model.train(was_training)
    return logs


@torch.no_grad()
def predict_loader(
    model: nn.Module, loader: Iterable[Any], device: torch.device, callbacks: CallbackList
) -> np.ndarray:
    """Softmax probabilities for every sample, in loader order."""
    was_training = model.training
    model.eval()
    callbacks.on_predict_begin()
    chunks = []
    for step, batch in enumerate(loader):
        callbacks.on_predict_batch_begin(step)
        x, _ = to_device(batch, device)
        chunks.append(torch.softmax(model(x).float(), dim=1).cpu())
        callbacks.on_predict_batch_end(step)
    callbacks.on_predict_end()
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
