"""The training, evaluation and prediction passes. Small functions the tuner calls, so the loop reads
top to bottom and device, precision and logging details stay out of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.callbacks import CallbackList
from finetunekit.metrics import MetricTracker
from finetunekit.strategies import Plan
from finetunekit.strategies.apply import set_frozen_norms_to_eval, write_lrs
from finetunekit.training import nonfinite
from finetunekit.training.compute import Compute
from finetunekit.training.context import LoopState, StepConfig
from finetunekit.training.interrupt import deferred_interrupt

LOG_EVERY = 10  # batch logs are synced from the device every this many steps...
LOG_INTERVAL = 0.5  # ...or when this many seconds passed since the last sync (slow steps: live progress bar)


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
    cfg: StepConfig,
    state: LoopState,
    loader: Iterable[Any],
    epoch: int,
    plan: Plan,
    callbacks: CallbackList,
    should_stop: Callable[[], bool],
    start_step: int = 0,
) -> dict[str, float]:
    """One pass over the training data: forward, loss, backward, step; LRs written before each step.

    ``start_step > 0`` continues an interrupted epoch: ``loader`` then yields the remaining batches
    only, and ``state.tracker`` already holds the metrics of the batches before it. ``should_stop`` is
    asked after each batch (Keras' ``stop_training``)."""
    state.model.train()
    set_frozen_norms_to_eval(plan, cfg.norms_by_group, cfg.train_bn)
    state.epoch = epoch
    if start_step == 0 or state.tracker is None:
        state.tracker = MetricTracker(cfg.metrics, cfg.device)
    tracker = state.tracker
    batch_logs: dict[str, float] = tracker.result() if start_step else {}
    step = start_step - 1
    synced_at = time.monotonic()
    for step, batch in enumerate(loader, start=start_step):
        callbacks.on_train_batch_begin(step)
        state.step = step
        write_lrs(cfg.optimizer, state.base_lr, cfg.schedule(cfg.progress(epoch, step)), plan)
        x, y = to_device(batch, cfg.device)
        if cfg.batch_transform is not None:
            xin, target = cfg.batch_transform(x, y, (epoch, step))
        else:
            xin, target = x, y
        if cfg.input_resize is not None:
            xin = cfg.input_resize(xin, epoch)
        weights = batch_sample_weights(batch, cfg.device)  # fit(sample_weight=...) batches carry them
        with deferred_interrupt():  # a Ctrl-C lands between steps, never inside one
            loss, logits = train_step(cfg, state, xin, target, step, weights)
        if state.step_applied:
            tracker.update(loss, logits, y)
        if step % LOG_EVERY == 0 or time.monotonic() - synced_at >= LOG_INTERVAL:
            nonfinite.check_deferred(state, cfg.optimizer)
            batch_logs = tracker.result() or unmeasured_logs(cfg.metrics, loss)
            synced_at = time.monotonic()
        callbacks.on_train_batch_end(step, batch_logs)
        if should_stop():
            break
    nonfinite.check_deferred(state, cfg.optimizer)
    should_stop()
    if cfg.sync_metrics:  # [distributed]
        tracker.all_reduce()
    logs = tracker.result()
    if not logs and step >= start_step:  # no step counted (a non-finite loss at the first batch)
        logs = unmeasured_logs(cfg.metrics, loss)
    logs["lr"] = state.base_lr * cfg.schedule(min(1.0, cfg.progress(epoch, step + 1)))
    return logs


def unmeasured_logs(metrics: Iterable[str], loss: torch.Tensor) -> dict[str, float]:
    """Logs when no batch was counted (its loss was non-finite and the step was not applied): the loss as
    it was, the metrics NaN, as Keras logs them, so History and monitors always have the loss key."""
    return {"loss": float(loss), **{name: float("nan") for name in metrics}}


def train_step(
    cfg: StepConfig, state: LoopState, x: torch.Tensor, y: torch.Tensor, index: int,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Micro-batch ``index`` of the epoch: forward under the stepper's autocast, backward of the loss
    plus the regularizer (e.g. L2-SP), and an optimizer step when the accumulation window is complete.
    ``weights``: per-sample loss weights (fit's class_weight / sample_weight, finetunekit.data.weights).
    A non-finite loss is caught before ``optimizer.step()`` (finetunekit.training.nonfinite), so the
    weights stay those of the last good step and ``state.step_applied`` says False. Returns the
    detached loss and logits for metrics."""
    stepper = cfg.stepper
    buffers = nonfinite.snapshot_buffers(state)
    with stepper.autocast():
        logits = stepper.forward(state.model, stepper.prepare(x))
        if cfg.loss_weighting is not None:
            loss = cfg.loss_weighting(logits, y, weights)
        else:
            loss = cfg.loss_fn(logits, y)
    total = loss + cfg.regularizer() if cfg.regularizer is not None else loss
    stepped = stepper.backward_and_step(
        total,
        cfg.optimizer,
        index,
        cfg.steps_per_epoch,
        lambda: nonfinite.guarded_step(state, cfg.optimizer, total.detach(), buffers),
    )
    state.step_applied = stepped is not False
    _step_torch_scheduler(cfg.schedule)
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
    compute: Compute | None = None,
) -> dict[str, float]:
    """Mean loss and metrics over a labelled loader, in eval mode; restores the model's mode after.
    ``sync_metrics``: sums and counts are added over DDP ranks, which each evaluated their own shard.
    ``compute``: the fit's precision / memory format / compiled forward (finetunekit.training.compute)."""
    was_training = model.training
    model.eval()
    tracker = MetricTracker(metrics, device)
    callbacks.on_test_begin()
    batch_logs: dict[str, float] = {}
    synced_at = time.monotonic()
    for step, batch in enumerate(loader):
        callbacks.on_test_batch_begin(step)
        x, y = to_device(batch, device)
        logits = compute(model, x) if compute is not None else model(x)
        tracker.update(loss_fn(logits.float(), y), logits, y)
        if step % LOG_EVERY == 0 or time.monotonic() - synced_at >= LOG_INTERVAL:  # running logs
            batch_logs, synced_at = tracker.result(), time.monotonic()
        callbacks.on_test_batch_end(step, batch_logs)
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
    compute: Compute | None = None,
    activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """``activation(outputs)`` (softmax by default; see finetunekit.tasks) for every sample, in loader
    order (forward passes through ``compute``)."""
    was_training = model.training
    model.eval()
    callbacks.on_predict_begin()
    chunks = []
    for step, batch in enumerate(loader):
        callbacks.on_predict_batch_begin(step)
        x, _ = to_device(batch, device)
        logits = compute(model, x) if compute is not None else model(x)
        outputs = logits.float()
        chunks.append((activation(outputs) if activation else torch.softmax(outputs, dim=1)).cpu())
        callbacks.on_predict_batch_end(step, {"outputs": chunks[-1].numpy()})  # as Keras
    callbacks.on_predict_end()
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)
