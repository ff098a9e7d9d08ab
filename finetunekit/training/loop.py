"""The training, evaluation and prediction passes. Small functions the tuner calls, so the loop reads
top to bottom and device, precision and logging details stay out of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.callbacks import CallbackList
from finetunekit.metrics import MetricTracker
from finetunekit.strategies import Plan
from finetunekit.strategies.apply import set_frozen_norms_to_eval, write_lrs
from finetunekit.training import nonfinite
from finetunekit.training.step import ComputeConfig, Stepper

BatchTransform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
LOG_EVERY = 10  # batch logs are synced from the device every this many steps...
LOG_INTERVAL = 0.5  # ...or when this many seconds passed since the last sync (slow steps: live progress bar)


@dataclass
class TrainContext:
    """Everything one epoch of training needs, gathered once per fit."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    schedule: Callable[[float], float]
    base_lr: float
    metrics: Any  # finetunekit.metrics.MetricSet
    device: torch.device
    steps_per_epoch: int
    total_steps: int
    train_bn: bool
    norms_by_group: list[list[nn.Module]] = field(default_factory=list)
    stepper: Stepper | None = None  # precision, accumulation, clipping, EMA (finetunekit.training.step)
    first_epoch: int = 0  # where this schedule cycle starts (a strategy may restart it, e.g. LPFT)
    sync_metrics: bool = False  # [distributed] epoch metrics summed over ranks (finetunekit.distributed)
    nonfinite: str = "raise"  # compile(on_nonfinite=...): see finetunekit.training.nonfinite
    # Where the loop is, and what a checkpoint needs to resume it exactly (finetunekit.training.train_state).
    epoch: int = 0
    step: int = 0
    tracker: MetricTracker | None = None
    epoch_start: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: int = 0
    stop_requested: bool = False
    nonfinite_state: dict[str, torch.Tensor] | None = None
    buffer_backup: list[torch.Tensor] | None = None
    step_applied: bool = True  # False after a step skipped for a non-finite loss
    regularizer: Callable[[], torch.Tensor] | None = None  # e.g. L2SP: added to the loss for backward
    batch_transform: BatchTransform | None = None  # e.g. mixup: (x, y) -> (x, soft targets) before forward
    loss_weighting: Any = None  # fit(class_weight= / sample_weight=): finetunekit.data.weights.LossWeighting


def to_device(batch: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Loaders yield (images, labels); a user's DataLoader may yield lists or bare images."""
    if isinstance(batch, (list, tuple)):
        x, y = batch[0], batch[1] if len(batch) > 1 else torch.full((len(batch[0]),), -1)
    else:
        x, y = batch, torch.full((len(batch),), -1)
    nb = device.type == "cuda"
    return x.to(device, non_blocking=nb), y.to(device, non_blocking=nb)


def batch_sample_weights(batch: Any, device: torch.device) -> torch.Tensor | None:
    """The third element of (images, targets, weights) batches (fit(sample_weight=...)), on ``device``."""
    if isinstance(batch, (list, tuple)) and len(batch) > 2 and isinstance(batch[2], torch.Tensor):
        return batch[2].to(device, non_blocking=device.type == "cuda")
    return None


def train_epoch(
    ctx: TrainContext,
    loader: Iterable[Any],
    epoch: int,
    plan: Plan,
    callbacks: CallbackList,
    tuner: Any,
    start_step: int = 0,
) -> dict[str, float]:
    """One pass over the training data: forward, loss, backward, step; LRs written before each step.

    ``start_step > 0`` continues an interrupted epoch: ``loader`` then yields the remaining batches
    only, and ``ctx.tracker`` already holds the metrics of the batches before it."""
    ctx.model.train()
    set_frozen_norms_to_eval(plan, ctx.norms_by_group, ctx.train_bn)
    ctx.epoch = epoch
    if start_step == 0 or ctx.tracker is None:
        ctx.tracker = MetricTracker(ctx.metrics, ctx.device)
    tracker = ctx.tracker
    batch_logs: dict[str, float] = tracker.result() if start_step else {}
    step = start_step - 1
    synced_at = time.monotonic()
    for step, batch in enumerate(loader, start=start_step):
        callbacks.on_train_batch_begin(step)
        ctx.step = step
        global_step = (epoch - ctx.first_epoch) * ctx.steps_per_epoch + step
        multiplier = ctx.schedule(global_step / max(1, ctx.total_steps))
        write_lrs(ctx.optimizer, ctx.base_lr, multiplier, plan)
        x, y = to_device(batch, ctx.device)
        xin, target = ctx.batch_transform(x, y) if ctx.batch_transform is not None else (x, y)
        loss, logits = train_step(ctx, xin, target, batch_sample_weights(batch, ctx.device))
        if ctx.step_applied:
            tracker.update(loss, logits, y)
        if step % LOG_EVERY == 0 or time.monotonic() - synced_at >= LOG_INTERVAL:
            nonfinite.check_deferred(ctx)
            batch_logs = tracker.result()
            synced_at = time.monotonic()
        tuner.stop_training = tuner.stop_training or ctx.stop_requested
        callbacks.on_train_batch_end(step, batch_logs)
        if tuner.stop_training:
            break
    nonfinite.check_deferred(ctx)
    tuner.stop_training = tuner.stop_training or ctx.stop_requested
    if ctx.sync_metrics:  # [distributed]
        tracker.all_reduce()
    logs = tracker.result()
    logs["lr"] = ctx.base_lr * ctx.schedule(
        min(1.0, ((epoch - ctx.first_epoch) * ctx.steps_per_epoch + step + 1) / max(1, ctx.total_steps))
    )
    return logs


def train_step(
    ctx: TrainContext, x: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch: forward under the stepper's autocast, backward of the loss plus the regularizer
    (e.g. L2-SP), and an optimizer step when the accumulation window is complete. A non-finite loss is
    caught before ``optimizer.step()`` (finetunekit.training.nonfinite), so the weights stay those of the last
    good step and ``ctx.step_applied`` says False. Returns the detached loss and logits for metrics."""
    if ctx.stepper is None:
        ctx.stepper = Stepper(ComputeConfig(), ctx.model, ctx.device)
    stepper = ctx.stepper
    buffers = nonfinite.snapshot_buffers(ctx)
    with stepper.autocast():
        logits = stepper.forward(ctx.model, stepper.prepare(x))
        if ctx.loss_weighting is not None:  # per-sample weights (finetunekit.data.weights)
            loss = ctx.loss_weighting(logits, y, weights)
        else:
            loss = ctx.loss_fn(logits, y)
    total = loss + ctx.regularizer() if ctx.regularizer is not None else loss
    stepped = stepper.backward_and_step(
        total,
        ctx.optimizer,
        ctx.steps_per_epoch,
        lambda: nonfinite.guarded_step(ctx, total.detach(), buffers),
    )
    ctx.step_applied = stepped is not False
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
    metrics: Any,
    device: torch.device,
    callbacks: CallbackList,
    sync_metrics: bool = False,
) -> dict[str, float]:
    """Mean loss and metrics over a labelled loader, in eval mode; restores the model's mode after.
    ``sync_metrics``: sums and counts are added over DDP ranks, which each evaluated their own shard."""
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
    if sync_metrics:  # [distributed]
        tracker.all_reduce()
    logs = tracker.result()
    callbacks.on_test_end(logs)
    model.train(was_training)
    return logs


@torch.no_grad()
def predict_loader(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device,
    callbacks: CallbackList,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """``activation(outputs)`` (softmax by default; see finetunekit.tasks) for every sample, in order."""
    was_training = model.training
    model.eval()
    callbacks.on_predict_begin()
    chunks = []
    for step, batch in enumerate(loader):
        callbacks.on_predict_batch_begin(step)
        x, _ = to_device(batch, device)
        outputs = model(x).float()
        chunks.append((activation(outputs) if activation else torch.softmax(outputs, dim=1)).cpu())
        callbacks.on_predict_batch_end(step)
    callbacks.on_predict_end()
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
