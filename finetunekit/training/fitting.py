"""How ``fit`` runs its epochs: resume point, schedule phases, one epoch (plan, DDP binding, feature
cache, train, validate), and the TrainContext each schedule cycle trains with.

Split from tuner.py so the facade stays short; FineTuner inherits these methods. The attributes listed
on :class:`FitMixin` are set by ``FineTuner.__init__`` / ``compile``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finetunekit.backbones.base import Backbone, DataConfig
from finetunekit.data import PreparedData, prepare_data, split_validation
from finetunekit.errors import ConfigError
from finetunekit.schedules import get_schedule, schedule_phase
from finetunekit.strategies import Plan, Strategy
from finetunekit.strategies.apply import set_frozen_norms_to_eval
from finetunekit.techniques.gap import gap_logs
from finetunekit.techniques.mixing import BatchMixer
from finetunekit.training import feature_cache, loop
from finetunekit.training.compile_config import CompileConfig
from finetunekit.training.distributed import run_for
from finetunekit.training.loader_state import epoch_start_snapshot
from finetunekit.training.step import Stepper, WeightEMA
from finetunekit.training.train_state import FitRun, ResumePoint


class FitMixin:
    """The epoch machinery behind ``FineTuner.fit``."""

    model: nn.Module
    device: torch.device
    strategy: Strategy
    seed: int | None
    num_classes: int
    in_chans: int
    class_names: list[str] | None
    stop_training: bool
    optimizer: torch.optim.Optimizer | None
    _backbone: Backbone
    _compiled: CompileConfig | None
    _run: FitRun | None
    _stepper: Stepper | None
    _ema: WeightEMA | None
    _feature_cache: feature_cache.FeatureCache | None
    _norms_by_group: list[list[nn.Module]]
    _params_by_group: list[list[nn.Parameter]]

    if TYPE_CHECKING:  # defined on FineTuner

        @property
        def data_config(self) -> DataConfig: ...

        @property
        def eval_model(self) -> nn.Module: ...

        def _apply_plan(self, epoch: int) -> Plan: ...

        def plan(self, epoch: int) -> Plan: ...

    def _fit_epochs(self, run: FitRun, val_loader: Any, initial_epoch: int) -> None:
        point = self._resume_point(run, initial_epoch)
        run.callbacks.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(point.epoch, run.epochs):
            self._use_schedule_phase(epoch)
            logs = self._fit_epoch(run, val_loader, epoch, point if epoch == point.epoch else None)
            if self.stop_training:
                break
        run.callbacks.on_train_end(logs)
        run.dist.release()  # [distributed] free DDP's gradient buckets (a copy of every trainable gradient)

    def _use_schedule_phase(self, epoch: int) -> None:
        """Make ``self._run.ctx`` the TrainContext of the schedule cycle ``epoch`` belongs to: a strategy
        may restart the schedule (LPFT's fine-tuning phase). The non-finite policy and skip count of the
        previous cycle carry over (TerminateOnNaN sets the policy once per fit)."""
        run = self._run
        assert run is not None
        start, end = schedule_phase(run.restarts, run.epochs, epoch)
        old = run.ctx
        if old is not None and old.first_epoch == start:
            return
        run.ctx = self._train_context(run.steps, end - start, first_epoch=start)
        if old is not None:
            run.ctx.nonfinite, run.ctx.skipped = old.nonfinite, old.skipped

    def _resume_point(self, run: FitRun, initial_epoch: int) -> ResumePoint:
        """An interrupted run's position when a BackupAndRestore holds one, else ``initial_epoch``."""
        for cb in run.callbacks:
            restore = getattr(cb, "restore_fit", None)
            point = restore() if restore is not None else None
            if point is not None:
                return point
        return ResumePoint(initial_epoch, 0)

    def _fit_epoch(
        self, run: FitRun, val_loader: Any, epoch: int, point: ResumePoint | None
    ) -> dict[str, float]:
        ctx, cbs, dist = run.ctx, run.callbacks, run.dist
        plan = self._apply_plan(epoch)
        dist.bind_model(ctx, self.model)  # [distributed] DDP over the trainable set; rebuilt on change
        dist.set_epoch(run.loader, epoch)
        start = point.step if point is not None else 0
        if start == 0:
            cbs.on_epoch_begin(epoch)
            ctx.epoch_start = epoch_start_snapshot(run.loader)
        # The one place an epoch may train on cached features (not the rest of an epoch resumed mid-way).
        next_plan = self.plan(epoch + 1) if epoch + 1 < run.epochs else None
        inputs = feature_cache.epoch_inputs(
            self._feature_cache, ctx, run.loader, val_loader, plan, next_plan, epoch, self.eval_model,
            resumed=start > 0,
        )  # fmt: skip
        batches = point.batches if point is not None and start else inputs.loader
        model, ctx.model = ctx.model, inputs.ctx.model  # the cut's suffix on cached epochs
        try:
            logs = loop.train_epoch(ctx, batches, epoch, plan, cbs, self, start)
        finally:
            ctx.model = model
        dist.end_epoch(self.model)  # [distributed] rank 0's BN statistics everywhere
        if inputs.val_loader is not None:
            val_logs = loop.evaluate_loader(
                inputs.val_model, inputs.val_loader, ctx.loss_fn, ctx.metrics, self.device, cbs,
                sync_metrics=dist.active,
            )  # fmt: skip
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
            logs.update(gap_logs(logs))
        cbs.on_epoch_end(epoch, logs)
        return logs

    def _fit_data(
        self,
        x: Any,
        y: Any,
        validation_split: float,
        validation_data: Any,
        augment: Any,
        imbalance: Any = None,
    ) -> tuple[PreparedData, PreparedData | None]:
        train = self._prepare(x, y, augment=augment, what="x")
        train = imbalance.attach(train) if imbalance is not None else train  # sample/sampling weights
        if self.class_names is None and train.class_names is not None:
            self.class_names = list(train.class_names)
        if validation_data is not None:
            vx, vy = validation_data if isinstance(validation_data, tuple) else (validation_data, None)
            return train, self._prepare(vx, vy, augment=False, what="validation_data")
        if validation_split:  # [distributed] every rank must split alike, seed or not
            return split_validation(train, validation_split, run_for(self).shared_seed(self.seed))
        return train, None

    def _prepare(
        self, x: Any, y: Any, *, augment: Any, what: str, require_labels: bool = True
    ) -> PreparedData:
        if x is None:
            raise ConfigError(
                f"{what} is None; pass images (array, tensor, Dataset, DataLoader or folder path)"
            )
        return prepare_data(
            x, y, data_config=self.data_config, in_chans=self.in_chans, augment=augment,
            require_labels=require_labels, num_classes=self.num_classes, what=what,
            task=getattr(self, "task", "classification"),
        )  # fmt: skip

    def _train_context(self, steps: int, epochs: int, first_epoch: int = 0) -> loop.TrainContext:
        cfg = self._compiled
        assert cfg is not None and self.optimizer is not None
        total = steps * epochs
        return loop.TrainContext(
            model=self.model, optimizer=self.optimizer, loss_fn=cfg.loss_fn,
            schedule=get_schedule(cfg.schedule, total, **cfg.schedule_kwargs), base_lr=cfg.lr,
            metrics=cfg.metrics, device=self.device, steps_per_epoch=steps, total_steps=total,
            train_bn=self.strategy.train_bn, norms_by_group=self._norms_by_group, first_epoch=first_epoch,
            nonfinite=cfg.on_nonfinite, stepper=self._stepper,
            regularizer=cfg.regularizer.bind(self) if hasattr(cfg.regularizer, "bind") else cfg.regularizer,
            batch_transform=self._batch_mixer(),
            loss_weighting=getattr(self, "_loss_weighting", None),
        )  # fmt: skip

    def _new_feature_cache(
        self, loader: Any, train: PreparedData, val: PreparedData | None, disabled: str | None
    ) -> feature_cache.FeatureCache:
        """This fit's frozen-prefix cache; ``feature_cache.epoch_inputs`` decides per epoch if it is used.
        ``disabled``: fit's reason to keep it off (cache_features=False, DDP, mixup), or None."""
        user_loader = train.loader is not None
        reason = feature_cache.static_reason(loader, self.strategy.train_bn, disabled, user_loader)
        val_ok = val is not None and val.loader is None and self._ema is None
        self._feature_cache = feature_cache.FeatureCache(
            self.model, self._backbone.head_path, self._params_by_group[-1],
            lambda plan: set_frozen_norms_to_eval(plan, self._norms_by_group, self.strategy.train_bn),
            autocast=self._stepper.autocast if self._stepper else None, reason=reason,
            cache_validation=val_ok,
        )  # fmt: skip
        return self._feature_cache

    def _batch_mixer(self) -> BatchMixer | None:
        cfg = self._compiled
        assert cfg is not None
        mixer = BatchMixer(self.num_classes, cfg.mixup, cfg.cutmix, seed=self.seed)
        return mixer if mixer.active else None
