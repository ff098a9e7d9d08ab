"""One fit: the :class:`Trainer` that ``FineTuner.fit`` builds, runs and drops.

The epoch loop reads top to bottom in :meth:`Trainer.fit`: resume point, ``on_train_begin``, then per
epoch the schedule cycle, the strategy's plan, the DDP binding, the feature cache decision, the training
pass, validation and ``on_epoch_end``. Everything a fit creates (the stepper, the feature cache, the DDP
wrapper, the batch mixer, the loop state and the :class:`~finetunekit.training.state.TrainingState` that
registers them) belongs to the trainer and dies with it; ``FineTuner.summary()`` keeps only the
:class:`FitOutcome`.

Callbacks see the run through :class:`~finetunekit._types.RunView`, which the trainer implements.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetunekit.callbacks import CallbackList
from finetunekit.schedules import get_schedule, schedule_phase
from finetunekit.strategies import Plan, lora
from finetunekit.techniques.gap import gap_logs
from finetunekit.techniques.mixing import BatchMixer
from finetunekit.techniques.resizing import resize_batch
from finetunekit.training import feature_cache, fit_options, fsdp, loop, train_state
from finetunekit.training.compile_config import CompileConfig
from finetunekit.training.compute import Compute
from finetunekit.training.context import LoopState, StepConfig
from finetunekit.training.loader_state import epoch_start_snapshot, why_not_repositionable
from finetunekit.training.parts import register_parts
from finetunekit.training.step import Stepper


@dataclass(frozen=True)
class FitOutcome:
    """What a finished fit leaves on the tuner for ``summary()`` and ``amp_skipped_steps``."""

    cache_status: str
    amp_skipped_steps: int
    epochs: int


@dataclass(frozen=True)
class ModelView:
    """The model side of a fit: the module, its layer groups' params and norms, and how plans apply."""

    model: nn.Module
    plan: Callable[[int], Plan]  # the strategy's checked plan for an epoch
    apply_plan: Callable[[int], Plan]  # applies it (requires_grad, optimizer state) and returns it
    norms_by_group: list[list[nn.Module]]
    head_params: Sequence[nn.Parameter]
    head_path: str
    set_frozen_norms: Callable[[Plan], None]
    train_bn: bool
    restarts: list[int]  # epochs where the strategy restarts the schedule


class Trainer:
    """Runs one ``fit``; implements the callbacks' :class:`~finetunekit._types.RunView`."""

    def __init__(
        self,
        *,
        owner: Any,
        view: ModelView,
        optimizer: torch.optim.Optimizer,
        compiled: CompileConfig,
        compute: Compute,
        ema: Any,
        device: torch.device,
        seed: int | None,
        num_classes: int,
        model_config: dict[str, Any],
        callbacks: CallbackList,
        loader: Any,
        val_loader: Any,
        epochs: int,
        steps_per_epoch: int,
        dist: Any,
        cache_reason: str | None,
        cache_validation: bool,
        validation_freq: fit_options.ValidationFreq = 1,
        take: int | None = None,
        loss_weighting: Any = None,
    ) -> None:
        self.owner, self.view, self.model = owner, view, view.model
        self.optimizer, self.compiled, self.ema, self.device = optimizer, compiled, ema, device
        self.model_config, self.callbacks = model_config, callbacks
        self.compile_kwargs: dict[str, Any] | None = getattr(owner, "_compile_kwargs", None)
        self.loader, self.val_loader, self.dist = loader, val_loader, dist
        self.epochs, self.steps_per_epoch = epochs, steps_per_epoch
        self.validation_freq, self.take = validation_freq, take  # fit(validation_freq=, steps_per_epoch=)
        self.loss_weighting = loss_weighting  # fit(class_weight= / sample_weight=)
        self.stepper = Stepper(compiled.compute, self.model, device, ema, compute)
        mixer = BatchMixer(num_classes, compiled.mixup, compiled.cutmix, seed=seed, rank=dist.rank)
        self.mixer = mixer if mixer.active else None
        self.cache = feature_cache.FeatureCache(
            self.model, view.head_path, view.head_params, view.set_frozen_norms,
            autocast=self.stepper.autocast, reason=cache_reason, cache_validation=cache_validation,
        )  # fmt: skip
        self.loop = LoopState(model=self.model, base_lr=compiled.lr, nonfinite=compiled.on_nonfinite)
        self.step_config = self._step_config(0)
        self.saved_generator: torch.Tensor | None = None  # set by a restore, for an epoch-start resume
        self._restore_from: Path | None = None
        self.state = register_parts(self)

    # -- the loop ------------------------------------------------------------------------------------
    def fit(self, initial_epoch: int) -> None:
        """Event order: a restore (when a callback requested one), on_train_begin, epochs, on_train_end.
        Callbacks see this trainer as their ``run`` for the fit's duration."""
        self.callbacks.set_run(self)
        try:
            self._fit(initial_epoch)
        finally:
            self.callbacks.set_run(None)

    def _fit(self, initial_epoch: int) -> None:
        point = self._resume_point(initial_epoch)
        self.callbacks.on_train_begin()
        logs: dict[str, float] = {}
        for epoch in range(point.epoch, self.epochs):
            self.use_schedule_phase(epoch)
            logs = self._epoch(epoch, point if epoch == point.epoch else None)
            if self.owner.stop_training:
                break
        self.callbacks.on_train_end(logs)
        self.dist.release()  # [distributed] free DDP's gradient buckets (a copy of every trainable gradient)

    def _epoch(self, epoch: int, point: train_state.ResumePoint | None) -> dict[str, float]:
        cfg, loop_state, cbs = self.step_config, self.loop, self.callbacks
        plan = self.view.apply_plan(epoch)
        loop_state.model = self.dist.bind_model(self.model)  # [distributed] DDP over the trainable set
        self.dist.set_epoch(self.loader, epoch)
        start = point.step if point is not None else 0
        if start == 0:
            cbs.on_epoch_begin(epoch)
            loop_state.epoch_start = epoch_start_snapshot(self.loader)
        # The one place an epoch may train on cached features (not the rest of an epoch resumed mid-way).
        next_plan = self.view.plan(epoch + 1) if epoch + 1 < self.epochs else None
        inputs = feature_cache.epoch_inputs(
            self.cache, loop_state.model, self.loader, self.val_loader, plan, next_plan, epoch,
            self.measured_model, self.device, resumed=start > 0,
        )  # fmt: skip
        batches = point.batches if point is not None and start else inputs.loader
        if self.take is not None:  # fit(steps_per_epoch=...): the first batches of this pass
            batches = fit_options.take(batches, self.take - start)
        loop_state.model = inputs.model  # the cut's suffix on cached epochs
        logs = loop.train_epoch(cfg, loop_state, batches, epoch, plan, cbs, self._should_stop, start)
        loop_state.model = self.model
        self.dist.end_epoch(self.model)  # [distributed] rank 0's BN statistics everywhere
        if inputs.val_loader is not None and fit_options.validates(self.validation_freq, epoch):
            val_logs = loop.evaluate_loader(
                inputs.val_model, inputs.val_loader, cfg.loss_fn, cfg.metrics, self.device, cbs,
                sync_metrics=self.dist.active, compute=self.stepper.compute,
            )  # fmt: skip
            logs.update({f"val_{k}": v for k, v in val_logs.items()})
            logs.update(gap_logs(logs))
        cbs.on_epoch_end(epoch, logs)
        return logs

    def _should_stop(self) -> bool:
        if self.loop.stop_requested:
            self.owner.stop_training = True
        return bool(self.owner.stop_training)

    def use_schedule_phase(self, epoch: int) -> None:
        """Make ``step_config`` that of the schedule cycle ``epoch`` belongs to: a strategy may restart
        the schedule (LPFT's fine-tuning phase)."""
        start, _ = schedule_phase(self.view.restarts, self.epochs, epoch)
        if self.step_config.first_epoch != start:
            self.step_config = self._step_config(epoch)

    def _step_config(self, epoch: int) -> StepConfig:
        cfg = self.compiled
        start, end = schedule_phase(self.view.restarts, self.epochs, epoch)
        total = self.steps_per_epoch * (end - start)
        regularizer = cfg.regularizer
        if hasattr(regularizer, "bind"):
            regularizer = regularizer.bind(self.owner)
        return StepConfig(
            optimizer=self.optimizer, loss_fn=cfg.loss_fn,
            schedule=get_schedule(cfg.schedule, total, **cfg.schedule_kwargs), metrics=cfg.metrics,
            device=self.device, steps_per_epoch=self.steps_per_epoch, total_steps=total,
            train_bn=self.view.train_bn, stepper=self.stepper, norms_by_group=self.view.norms_by_group,
            first_epoch=start, sync_metrics=self.dist.active, regularizer=regularizer,
            batch_transform=self.mixer, loss_weighting=self.loss_weighting,
            input_resize=self._input_resize(),
        )  # fmt: skip

    def _input_resize(self) -> Callable[[torch.Tensor, int], torch.Tensor] | None:
        """compile(progressive_resizing=...): each training batch at its epoch's size."""
        resizing, epochs = self.compiled.progressive_resizing, self.epochs
        if resizing is None:
            return None
        return lambda x, epoch: resize_batch(x, resizing.size(epoch, epochs, tuple(x.shape[-2:])))

    def _resume_point(self, initial_epoch: int) -> train_state.ResumePoint:
        """An interrupted run's position when a callback (BackupAndRestore) asked for a restore."""
        for cb in self.callbacks:
            restore_fit = getattr(cb, "restore_fit", None)
            if restore_fit is not None:
                restore_fit()
            if self._restore_from is not None:
                point = train_state.restore(self, self._restore_from)
                announce = getattr(cb, "on_restored", None)  # BackupAndRestore says where it resumed
                if announce is not None:
                    announce(point, self._restore_from)
                return point
        return train_state.ResumePoint(initial_epoch, 0)

    def outcome(self) -> FitOutcome:
        return FitOutcome(feature_cache.cache_status(self.cache), self.stepper.skipped_steps, self.epochs)

    def set_base_lr(self, value: float) -> None:
        self.loop.base_lr = float(value)

    @property
    def measured_model(self) -> nn.Module:
        """What validation measures and saves write: the EMA when on, else the model."""
        return self.ema.module if self.ema is not None else self.model

    # -- RunView ---------------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        return self.loop.epoch

    @property
    def step(self) -> int:
        return self.loop.step

    @property
    def stop_requested(self) -> bool:
        return self.loop.stop_requested

    @property
    def exact_resume_problem(self) -> str | None:
        return why_not_repositionable(self.loader)

    def request_stop(self) -> None:
        self.owner.stop_training = True

    def set_nonfinite_policy(self, policy: str) -> None:
        self.loop.nonfinite = policy

    def capture_state(self, epoch: int, step: int) -> dict[str, bytes]:
        return train_state.capture(self, epoch, step)

    def measured_weights(self) -> dict[str, Any]:
        if fsdp.is_sharded(self.model):  # [fsdp] the full weights (no EMA or LoRA under FSDP)
            return dict(self.state["model"].state_dict())
        return dict(lora.merged_state_dict(self.measured_model))  # under LoRA: merged, as ft.save writes

    def gathered_state(self) -> AbstractContextManager[None]:
        return self.state.gathered()

    def model_files(self) -> dict[str, bytes]:
        return train_state.model_files(self.model_config, self.measured_weights())

    def request_restore(self, folder: Any) -> None:
        self._restore_from = Path(folder)

    def run_on_main(self, fn: Callable[[], Any], what: str) -> Any:
        return self.dist.run_on_main(fn, what)
