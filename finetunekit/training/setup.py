"""What ``FineTuner.fit`` does before the first epoch: the data split, the loaders, the preflight checks,
the callback list, the feature cache's fit-wide decision, and the :class:`Trainer` itself.

The tuner hands everything over as explicit arguments: nothing here reads the tuner's attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finetunekit.callbacks import Callback, CallbackList
from finetunekit.callbacks.monitor import monitor_params
from finetunekit.data import PreparedData, split_validation
from finetunekit.errors import ConfigError
from finetunekit.training import feature_cache, fit_options, preflight
from finetunekit.training.compile_config import CompileConfig
from finetunekit.training.compute import Compute
from finetunekit.training.trainer import ModelView, Trainer

Prepare = Callable[..., PreparedData]  # FineTuner._prepare: (x, y, augment=, what=) -> PreparedData


@dataclass(frozen=True)
class FitArgs:
    """``fit``'s loop arguments, checked by the tuner."""

    batch_size: int
    epochs: int
    verbose: int
    callbacks: Sequence[Callback]
    shuffle: bool
    num_workers: int | None
    cache_features: bool
    steps_per_epoch: int | None = None  # fit(steps_per_epoch=...): None is every batch of a pass
    validation_freq: fit_options.ValidationFreq = 1  # checked by fit_options.check_validation_freq
    loss_weighting: Any = None  # fit(class_weight= / sample_weight=): finetunekit.data.weights.LossWeighting


def fit_data(
    prepare: Prepare,
    x: Any,
    y: Any,
    *,
    validation_split: float,
    validation_data: Any,
    augment: bool,
    split_seed: Callable[[], int | None],
    attach: Callable[[PreparedData], PreparedData] = lambda data: data,
) -> tuple[PreparedData, PreparedData | None]:
    """(training data, validation data or None). ``split_seed`` gives the split's seed: every DDP rank
    must split alike, seed or not. ``attach`` puts per-sample weights on the training data before any
    split (fit's sample_weight / sampling_weights)."""
    train = attach(prepare(x, y, augment=augment, what="x"))
    if validation_data is not None:
        vx, vy = validation_data if isinstance(validation_data, tuple) else (validation_data, None)
        return train, prepare(vx, vy, augment=False, what="validation_data")
    if validation_split:
        return split_validation(train, validation_split, split_seed())
    return train, None


def build_trainer(
    owner: Any,
    *,
    view: ModelView,
    optimizer: torch.optim.Optimizer,
    compiled: CompileConfig,
    compute: Compute,
    ema: Any,
    seed: int | None,
    num_classes: int,
    spec: str,
    model_config: dict[str, Any],
    train: PreparedData,
    val: PreparedData | None,
    dist: Any,
    args: FitArgs,
    bn_training: Sequence[nn.Module] = (),
) -> Trainer:
    """Loaders (this rank's share under DDP), preflight checks, callbacks, then the Trainer.
    ``bn_training``: the BatchNorm modules some epoch trains, for the last-batch-of-one check."""
    device = compute.device
    loader = dist.train_loader(train, args.batch_size, args.shuffle, seed, num_workers=args.num_workers)
    val_loader = dist.eval_loader(val, args.batch_size, num_workers=args.num_workers) if val else None
    preflight.check_same_classes(train, val)
    preflight.check_has_batches(loader)
    sizes = preflight.probe_forward(view.model, train, device, num_classes, spec)
    preflight.check_last_batch(loader, train, sizes, list(bn_training))  # a last batch of one vs BatchNorm
    dist.seed_ranks(seed)
    sized = has_length(loader)
    batches = num_batches(loader) if sized or args.steps_per_epoch is None else args.steps_per_epoch
    steps = fit_options.check_steps_per_epoch(args.steps_per_epoch, batches)
    take = steps if steps < batches or not sized else None  # a stream is cut at steps_per_epoch
    all_callbacks = [*args.callbacks, *dist.callbacks()]
    monitor = monitor_params(compiled.metrics, val_loader is not None, all_callbacks)  # unknown monitors
    callbacks = CallbackList(
        all_callbacks, tuner=owner, add_history=True, add_progbar=args.verbose != 0,
        verbose=args.verbose, epochs=args.epochs, steps=steps, **monitor,
    )  # fmt: skip
    mixing = bool(compiled.mixup or compiled.cutmix)
    resizing = compiled.progressive_resizing is not None
    disabled = feature_cache.disabled_reason(args.cache_features, dist.active, mixing, resizing)
    if resizing:
        preflight.check_resizable(view.model, compiled.progressive_resizing, args.epochs, train, device, spec)
    if take is not None:  # the cache holds whole passes
        disabled = disabled or f"steps_per_epoch={steps} trains on part of each pass"
    if train.sample_weights is not None:
        disabled = disabled or "fit(sample_weight=...) is given (cached batches carry no weights)"
    reason = feature_cache.static_reason(loader, view.train_bn, disabled, train.loader is not None)
    return Trainer(
        owner=owner, view=view, optimizer=optimizer, compiled=compiled, compute=compute, ema=ema,
        device=device, seed=seed, num_classes=num_classes, model_config=model_config, callbacks=callbacks,
        loader=loader, val_loader=val_loader, epochs=args.epochs, steps_per_epoch=steps, dist=dist,
        cache_reason=reason, cache_validation=val is not None and val.loader is None and ema is None,
        validation_freq=args.validation_freq, take=take,
        loss_weighting=args.loss_weighting,
    )  # fmt: skip


def has_length(loader: Any) -> bool:
    try:
        len(loader)
    except TypeError:
        return False
    return True


def num_batches(loader: Any) -> int:
    try:
        return max(1, len(loader))
    except TypeError as e:
        raise ConfigError(
            "the training data has no length (an IterableDataset or a generator); finetunekit needs the "
            "number of batches per epoch for LR schedules: pass fit(steps_per_epoch=N), or give the "
            "dataset a __len__"
        ) from e
