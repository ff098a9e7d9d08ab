"""The state every FineTuner method reads, and the helpers they share.

A FineTuner is assembled from small mixins (fit, inference, persistence, the after-fit tools) over
this base, so ``tuner.py`` stays a short facade and each file holds one concern. The base builds
the per-model state from a backbone; ``fit``, ``evaluate`` and the tools only read and update it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finetunekit import _assembly as assembly
from finetunekit.backbones.base import Backbone, DataConfig
from finetunekit.backbones.snapshot import backbone_state
from finetunekit.callbacks import History
from finetunekit.callbacks.stop_flag import StopTrainingFlag
from finetunekit.data import PreparedData, prepare_data
from finetunekit.errors import ConfigError
from finetunekit.metrics.thresholds import check_threshold
from finetunekit.strategies import Plan, Strategy, check_plan
from finetunekit.strategies.apply import (
    apply_plan,
    effective_plan,
    freeze_outside,
    group_params,
    norm_modules_by_group,
    set_frozen_norms_to_eval,
)
from finetunekit.training import frozen_defaults, preflight
from finetunekit.training.compile_config import CompileConfig
from finetunekit.training.compute import Compute, ComputeConfig
from finetunekit.training.trainer import FitOutcome, ModelView, Trainer


class TunerBase:
    """The model, its layer groups, strategy, compile state and the helpers every method uses."""

    # True on the FineTuner or on its nn.Module (Keras' self.model.stop_training) stops a fit
    stop_training = StopTrainingFlag()
    # set by FineTuner.__init__ (or load); every other attribute by _init_from_backbone / compile
    seed: int | None
    distributed: bool | str | None
    sync_bn: bool
    device: torch.device
    strategy: Strategy
    task: str
    _task_given: bool

    if TYPE_CHECKING:
        compile: Callable[..., Any]  # FineTuner.compile

    def _init_from_backbone(
        self, built: Backbone, num_classes: int, in_chans: int, class_names: Sequence[str] | None
    ) -> None:
        self.strategy.prepare(built)  # LoRA injects its adapters here, before anything sees the model
        self._backbone = built
        self.model = built.model.to(self.device)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.class_names = list(class_names) if class_names is not None else None
        self.strategy.validate(len(built.groups))
        self.stop_training = False
        self.history: History | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._compiled: CompileConfig | None = None
        self._planned_epochs: int | None = None
        self._trainer: Trainer | None = None  # the fit in progress; dropped when it ends
        self._last_fit: FitOutcome | None = None  # what summary() reports of the last fit
        trainable = self.strategy.trainable_params(self.model, built.groups)  # BitFit, LoRA: a subset
        freeze_outside(self.model, trainable)
        self._params_by_group = group_params(self.model, built.groups, trainable)
        self._checkpointing = "off"  # compile(grad_checkpointing=True) says how it is done
        self._norms_by_group = norm_modules_by_group(self.model, built.groups)
        self._ema: Any = None  # finetunekit.training.ema.WeightEMA when compile(ema_decay=...)
        self._compute: Compute | None = None  # the one forward path, set by compile()
        self._augment_choice: frozen_defaults.AugmentChoice | None = None  # the last fit's, for summary()
        # The strategy applies from construction, as fastai's vision_learner freezes at creation.
        for scale, params in zip(self.plan(0), self._params_by_group, strict=True):
            for p in params:
                p.requires_grad_(scale is not None)
        # Starting point for L2-SP, WiSE-FT, RetentionMonitor, learning_curve: one CPU copy of the backbone.
        self._pretrained_state = backbone_state(self.model, built.head_path)
        self._wise_end: tuple[Any, dict[str, torch.Tensor]] | None = None
        self._wise_alpha: float | None = None
        self._compile_kwargs: dict[str, Any] | None = None
        self._head_at_init: dict[str, torch.Tensor] | None = preflight.head_snapshot(
            self.model, built.groups[-1].param_names
        )  # [persist]
        self.temperature = 1.0  # softmax temperature fitted by calibrate(); predict divides by it
        self._threshold: float | list[float] = 0.5  # multi-label decision threshold (tune_thresholds)

    @property
    def groups(self) -> list[assembly.GroupInfo]:
        """Layer groups, ordered input -> head, with parameter counts and whether each trains now (the
        strategy's epoch-0 plan from construction on; during and after fit, the plan last applied)."""
        return assembly.group_infos(self.model, self._backbone, self._params_by_group)

    @property
    def data_config(self) -> DataConfig:
        """Preprocessing used for uint8 images: size, mean, std, interpolation, from the weights."""
        return self._backbone.data_config

    @property
    def spec(self) -> str:
        return self._backbone.spec

    def _model_view(self) -> ModelView:
        """What a Trainer needs of the model: plans, layer-group params and norms, the head."""
        n, norms, train_bn = len(self._backbone.groups), self._norms_by_group, self.strategy.train_bn
        return ModelView(
            model=self.model, plan=self.plan, apply_plan=self._apply_plan, norms_by_group=norms,
            head_params=self._params_by_group[-1], head_path=self._backbone.head_path,
            set_frozen_norms=lambda p: set_frozen_norms_to_eval(p, norms, train_bn),
            train_bn=train_bn, restarts=self.strategy.schedule_restarts(n),
        )  # fmt: skip

    def _prepare(
        self, x: Any, y: Any, *, augment: Any, what: str, require_labels: bool = True
    ) -> PreparedData:
        if x is None:
            raise ConfigError(
                f"{what} is None; pass images (array, tensor, Dataset, DataLoader or folder path)"
            )
        return prepare_data(
            x, y, data_config=self.data_config, in_chans=self.in_chans, augment=augment,
            require_labels=require_labels, num_classes=self.num_classes, what=what, task=self.task,
        )  # fmt: skip

    def _compute_path(self) -> Compute:
        """compile()'s Compute (precision, channels_last, compiled forward); eager fp32 before compile."""
        if self._compute is None:
            self._compute = Compute(ComputeConfig(), self.model, self.device)
        return self._compute

    @property
    def eval_model(self) -> nn.Module:
        """What validation, evaluate, predict and save use: the EMA of the weights when on, else the model."""
        return self._ema.module if self._ema is not None else self.model

    @property
    def amp_skipped_steps(self) -> int:
        """Optimizer steps the fp16 GradScaler skipped (inf/NaN gradients) in the last fit."""
        return self._last_fit.amp_skipped_steps if self._last_fit is not None else 0

    def plan(self, epoch: int) -> Plan:
        """The strategy's plan for ``epoch``, checked."""
        plan = self.strategy.plan(len(self._backbone.groups), epoch)
        check_plan(self.strategy, plan, len(self._backbone.groups))
        return effective_plan(plan, self._params_by_group)  # a group with nothing to train is frozen

    def _apply_plan(self, epoch: int) -> Plan:
        """The one method that applies a plan (trainability; LRs follow it in the loop)."""
        assert self.optimizer is not None
        plan = self.plan(epoch)
        apply_plan(plan, self._params_by_group, self.optimizer)
        return plan

    @property
    def threshold(self) -> float | list[float]:
        """The multi-label decision threshold: one float or one per class (saved with the model)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | Sequence[float]) -> None:
        self._threshold = check_threshold(value, self.num_classes)

    def _model_config(self) -> dict[str, Any]:
        """What ``save`` writes next to the weights, and what a resume compares."""
        config = assembly.model_config(
            self._backbone, self.num_classes, self.in_chans, self.class_names, self.strategy
        )
        return {**config, "temperature": self.temperature, "task": self.task, "threshold": self._threshold}
