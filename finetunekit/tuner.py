"""FineTuner: a pretrained backbone with a new head, trained Keras-style with a fine-tuning strategy.

The object owns the model, its ordered layer groups, the strategy and (after ``compile``) the optimizer.
``fit`` is the loop; how it runs each epoch lives in :mod:`finetunekit.training.fitting` (inherited), and what
happens inside one epoch in :mod:`finetunekit.training.loop`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from finetunekit.backbones import build_backbone, rebuild_backbone
from finetunekit.backbones.base import Backbone, DataConfig
from finetunekit.backbones.snapshot import backbone_state
from finetunekit.callbacks import Callback, CallbackList, History
from finetunekit.distributed.failure import guard
from finetunekit.errors import CheckpointError, ConfigError, NotCompiledError
from finetunekit.metrics import check_metrics
from finetunekit.saving import model_folder as saving
from finetunekit.schedules import get_schedule
from finetunekit.strategies import Plan, Strategy, check_plan, resolve_strategy
from finetunekit.strategies.apply import (
    apply_plan,
    build_param_groups,
    group_params,
    make_optimizer,
    norm_modules_by_group,
)
from finetunekit.techniques.gap import gap_line
from finetunekit.techniques.mixing import check_mix_alpha
from finetunekit.tools import learning_curve as _lc
from finetunekit.tools import wise
from finetunekit.tools.summary import format_summary
from finetunekit.training import feature_cache, frozen_defaults, loop, nonfinite, preflight
from finetunekit.training.compile_config import CompileConfig, resolve_loss
from finetunekit.training.determinism import deterministic_mode
from finetunekit.training.distributed import run_for
from finetunekit.training.fitting import FitMixin
from finetunekit.training.step import Stepper, WeightEMA, check_compute, make_ema
from finetunekit.training.train_state import FitRun
from finetunekit.training.tta import FlipTTA
from finetunekit.validation import check_fit_args, check_positive_int, resolve_device

if TYPE_CHECKING:
    from finetunekit.tools.lr_finder import LRFinderResult


@dataclass(frozen=True)
class GroupInfo:
    """What ``ft.groups`` shows: a layer group's name and size."""

    name: str
    num_params: int
    param_names: tuple[str, ...]

    def __repr__(self) -> str:
        return f"GroupInfo(name={self.name!r}, num_params={self.num_params:,})"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class FineTuner(FitMixin):
    """Fine-tune a timm / torchvision / custom backbone with a Keras-style API. See DESIGN.md."""

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int,
        *,
        pretrained: bool = True,
        weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
        strategy: Strategy | Sequence[Strategy] | None = None,
        image_size: int | tuple[int, int] | None = None,
        in_chans: int = 3,
        device: str | torch.device = "auto",
        seed: int | None = None,
        head: str | None = None,
        class_names: Sequence[str] | None = None,
        groups: Sequence[str | Sequence[str]] | None = None,
        distributed: bool | None = None,
        sync_bn: bool = False,
    ):
        """``distributed``: None runs DDP when launched by torchrun (or a process group exists), True
        insists, False never (each process trains alone). ``sync_bn`` turns BatchNorm into SyncBatchNorm
        under DDP (CUDA only). See docs/distributed.md."""
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_chans", in_chans)
        self.seed = seed
        self.distributed, self.sync_bn = distributed, bool(sync_bn)  # [distributed]
        if seed is not None:
            seed_everything(seed)
        self.device = resolve_device(device)
        self.strategy = resolve_strategy(strategy)
        built = build_backbone(
            backbone,
            num_classes,
            pretrained=pretrained and weights is None,
            weights=weights,
            in_chans=in_chans,
            image_size=image_size,
            head=head,
            groups=groups,
        )
        self._init_from_backbone(built, num_classes, in_chans, class_names)

    def _init_from_backbone(
        self, built: Backbone, num_classes: int, in_chans: int, class_names: Sequence[str] | None
    ) -> None:
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
        self._run: FitRun | None = None  # the fit in progress, for checkpointing callbacks
        self._params_by_group = group_params(self.model, built.groups)
        self._norms_by_group = norm_modules_by_group(self.model, built.groups)
        self._ema: WeightEMA | None = None
        self._feature_cache: feature_cache.FeatureCache | None = None
        self._augment_choice: frozen_defaults.AugmentChoice | None = None
        self._stepper: Stepper | None = None
        # Starting point for L2-SP, WiSE-FT, RetentionMonitor, learning_curve: one CPU copy of the backbone.
        self._pretrained_state = backbone_state(self.model, built.head_path)
        self._wise_end: tuple[Any, dict[str, torch.Tensor]] | None = None
        self._wise_alpha: float | None = None
        self._compile_kwargs: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------- properties
    @property
    def groups(self) -> list[GroupInfo]:
        """Layer groups, ordered input -> head, with parameter counts."""
        return [
            GroupInfo(g.name, sum(p.numel() for p in ps), tuple(g.param_names))
            for g, ps in zip(self._backbone.groups, self._params_by_group, strict=True)
        ]

    @property
    def data_config(self) -> DataConfig:
        """Preprocessing used for uint8 images: size, mean, std, interpolation, from the weights."""
        return self._backbone.data_config

    @property
    def spec(self) -> str:
        return self._backbone.spec

    @property
    def base_lr(self) -> float:
        """compile()'s ``lr``: every group's LR is ``base_lr * schedule * group scale``. ReduceLROnPlateau
        and LearningRateScheduler change this value, so discriminative ratios and the schedule stay."""
        if self._compiled is None:
            raise NotCompiledError("base_lr is set by compile(lr=...); call ft.compile() first")
        return self._compiled.lr

    @base_lr.setter
    def base_lr(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"base_lr={value!r} is invalid; expected a finite float > 0, e.g. 1e-4")
        if self._compiled is None:
            raise NotCompiledError("base_lr is set by compile(lr=...); call ft.compile() first")
        self._compiled.lr = float(value)
        if self._run is not None:
            self._run.ctx.base_lr = float(value)

    # -------------------------------------------------------------------------------------- compile
    def compile(
        self,
        optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw",
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "cross_entropy",
        metrics: Sequence[str] = ("accuracy",),
        schedule: Any = "one_cycle",
        label_smoothing: float = 0.0,
        schedule_kwargs: Mapping[str, Any] | None = None,
        on_nonfinite: str = "raise",
        *,
        precision: str = "32",
        channels_last: bool = False,
        compile_model: bool | str = False,
        accumulate_steps: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        ema_decay: float | None = None,
        regularizer: Any = None,
        mixup: float = 0.0,
        cutmix: float = 0.0,
    ) -> FineTuner:
        """Choose optimizer, LR, loss, metrics and LR schedule. Every layer group enters the optimizer
        now, frozen or not, so nothing is added mid-run (DESIGN decision 2). ``lr=2e-3`` with one-cycle
        is measured in benchmarks/strategies.py (docs/strategies.md): it beat 1e-3 and 3e-3.
        ``on_nonfinite``: what a NaN or infinite loss does, "raise", "skip" or "stop" (see
        finetunekit.training.nonfinite).

        Compute options (docs/performance.md): ``precision`` "32" | "bf16" | "16" (autocast; fp16 adds a
        GradScaler whose skipped steps ``amp_skipped_steps`` counts), ``channels_last``, ``compile_model``
        (torch.compile; eager with a warning when it cannot), ``accumulate_steps`` (one optimizer step per
        that many batches), ``clip_grad_norm`` / ``clip_grad_value``, ``ema_decay`` (an EMA of the weights,
        used by validation, evaluate, predict and save).

        ``regularizer=L2SP(alpha, beta)`` replaces weight decay (the optimizer's decoupled decay becomes 0
        for every group; see docs/failure_modes.md). ``mixup`` / ``cutmix`` are Beta concentrations
        (0 = off) for mixing training batches with soft targets.
        """
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        nonfinite.check_policy(on_nonfinite)
        compute = check_compute(self.device, precision, channels_last, compile_model, accumulate_steps,
                                clip_grad_norm, clip_grad_value, ema_decay)  # fmt: skip
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ConfigError(f"lr={lr!r} is invalid; expected a float > 0, e.g. 1e-3")
        if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) or weight_decay < 0:
            raise ConfigError(f"weight_decay={weight_decay!r} is invalid; expected a float >= 0, e.g. 0.01")
        if isinstance(metrics, str):
            metrics = [metrics]
        check_mix_alpha("mixup", mixup)
        check_mix_alpha("cutmix", cutmix)
        if regularizer is not None and not callable(regularizer):
            raise ConfigError(f"regularizer={regularizer!r} is not callable; expected e.g. L2SP(0.01, 0.01)")
        decay = 0.0 if getattr(regularizer, "replaces_weight_decay", False) else weight_decay
        groups = build_param_groups(self.model, self._backbone.groups, self._backbone.no_weight_decay, decay)
        self.optimizer = make_optimizer(optimizer, groups, float(lr))
        get_schedule(schedule, 1, **dict(schedule_kwargs or {}))  # fail now, not at fit
        self._compiled = CompileConfig(
            optimizer=optimizer,
            lr=float(lr),
            weight_decay=float(weight_decay),
            loss_fn=resolve_loss(loss, label_smoothing),
            metrics=check_metrics(metrics),
            schedule=schedule,
            schedule_kwargs=dict(schedule_kwargs or {}),
            compute=compute,
            on_nonfinite=on_nonfinite,
            regularizer=regularizer,
            mixup=float(mixup),
            cutmix=float(cutmix),
        )
        self._ema = make_ema(self.model, compute.ema_decay) if compute.ema_decay else None
        self._compile_kwargs = given  # learning_curve compiles its fresh copies the same way
        return self

    # ------------------------------------------------------------------------------------------ fit
    @guard  # [distributed] one rank failing stops all, naming the cause
    def fit(
        self,
        x: Any = None,
        y: Any = None,
        batch_size: int = 32,
        epochs: int = 1,
        verbose: int | str = "auto",
        callbacks: Sequence[Callback] | None = None,
        validation_split: float = 0.0,
        validation_data: Any = None,
        shuffle: bool = True,
        initial_epoch: int = 0,
        augment: bool | str = True,
        deterministic: bool = False,
        num_workers: int | None = None,
        cache_features: bool = True,
    ) -> History:
        """Train for ``epochs`` epochs (Keras semantics) and return the History.

        Event order: a BackupAndRestore in ``callbacks`` first restores an interrupted run (model,
        optimizer, callback states, loop position, RNG states); on_train_begin; per epoch: plan applied
        (requires_grad, BN modes), on_epoch_begin (not for an epoch resumed in its middle), per batch
        on_train_batch_begin / LR write / step (not applied when the loss is non-finite) /
        on_train_batch_end, then validation (on_test_begin/end) and on_epoch_end(logs with val_ keys);
        finally on_train_end. Checkpointing callbacks run after all others in each hook, so they save
        what the other callbacks did. ``deterministic=True`` turns on torch's deterministic algorithms
        for this fit and restores the previous setting afterwards.

        ``num_workers``: DataLoader worker processes (None: in-process for in-memory data, a few for image
        files). ``cache_features``: while the bottom layer groups stay frozen (FrozenBackbone, LPFT's
        probe, GradualUnfreeze's early phases) and nothing is augmented, run them once and train the
        rest on their cached outputs (same results; see summary() and docs/performance.md). ``augment``:
        True (default) augments, except that when only the head trains in every epoch it trains on
        un-augmented, cached features (the linear-probe choice; said in the log and summary());
        "always" augments every epoch, frozen or not; False never.
        """
        verbose = check_fit_args(batch_size, epochs, initial_epoch, validation_split, verbose)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None and self.optimizer is not None
        if self.seed is not None:
            seed_everything(self.seed)
        dist = run_for(self)  # [distributed] DDP / sharding when launched by torchrun; else pass-through
        mixing = bool(self._compiled.mixup or self._compiled.cutmix)
        disabled = feature_cache.disabled_reason(cache_features, dist.active, mixing)
        self._augment_choice = frozen_defaults.choose_augment(  # a frozen backbone: cached, un-augmented
            augment, [self.plan(e) for e in range(initial_epoch, epochs)], x, cache_off=disabled,
            train_bn=self.strategy.train_bn,
        )  # fmt: skip
        frozen_defaults.announce(self._augment_choice, verbose)
        train, val = self._fit_data(x, y, validation_split, validation_data, self._augment_choice.augment)
        loader = dist.train_loader(train, batch_size, shuffle, self.seed, num_workers=num_workers)
        val_loader = dist.eval_loader(val, batch_size, num_workers=num_workers) if val else None
        preflight.check_same_classes(train, val)
        preflight.check_has_batches(loader)
        preflight.probe_forward(self.model, train, self.device, self.num_classes, self.spec)
        dist.seed_ranks(self.seed)
        steps = _num_batches(loader)
        cbs = CallbackList(
            [*(callbacks or []), *dist.callbacks()], tuner=self, add_history=True,
            add_progbar=verbose != 0, verbose=verbose, epochs=epochs, steps=steps,
        )  # fmt: skip
        restarts = self.strategy.schedule_restarts(len(self._backbone.groups))
        self._stepper = Stepper(self._compiled.compute, self.model, self.device, self._ema)
        self._new_feature_cache(loader, train, val, disabled)
        self._run = FitRun(None, cbs, loader, epochs, steps, restarts, dist)
        self._use_schedule_phase(initial_epoch)
        self._planned_epochs = epochs
        self.stop_training = False
        try:
            with deterministic_mode(deterministic):
                self._fit_epochs(self._run, val_loader, initial_epoch)
        finally:
            self._run = None
        self.history = cbs.history
        return cbs.history

    @property
    def eval_model(self) -> nn.Module:
        """What validation, evaluate, predict and save use: the EMA of the weights when on, else the model."""
        return self._ema.module if self._ema is not None else self.model

    @property
    def amp_skipped_steps(self) -> int:
        """Optimizer steps the fp16 GradScaler skipped (inf/NaN gradients) in the last fit."""
        return int(self._stepper.skipped_steps.item()) if self._stepper is not None else 0

    def plan(self, epoch: int) -> Plan:
        """The strategy's plan for ``epoch``, checked."""
        plan = self.strategy.plan(len(self._backbone.groups), epoch)
        check_plan(self.strategy, plan, len(self._backbone.groups))
        return plan

    def _apply_plan(self, epoch: int) -> Plan:
        """The one method that applies a plan (trainability; LRs follow it in the loop)."""
        assert self.optimizer is not None
        plan = self.plan(epoch)
        apply_plan(plan, self._params_by_group, self.optimizer)
        return plan

    # ---------------------------------------------------------------------------- evaluate/predict
    @guard  # [distributed]
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int = 32, verbose: int = 0,
                 callbacks: Sequence[Callback] | None = None,
                 tta: bool = False) -> dict[str, float]:  # fmt: skip
        """Loss and metrics on labelled data, as Python floats. ``tta=True`` averages the probabilities
        of each image and its horizontal mirror (the loss is that of the averaged prediction)."""
        check_positive_int("batch_size", batch_size)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None
        data = self._prepare(x, y, augment=False, what="x")
        dist = run_for(self)  # [distributed] each rank evaluates its shard; sums are all-reduced
        loader = dist.eval_loader(data, batch_size)
        cbs = CallbackList(list(callbacks or []), tuner=self)
        model = FlipTTA(self.eval_model) if tta else self.eval_model
        return loop.evaluate_loader(
            model, loader, self._compiled.loss_fn, self._compiled.metrics, self.device, cbs,
            sync_metrics=dist.active,
        )  # fmt: skip

    @guard  # [distributed]
    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0,
                callbacks: Sequence[Callback] | None = None, tta: bool = False) -> np.ndarray:  # fmt: skip
        """Class probabilities, shape (N, num_classes), in input order; ``tta=True`` averages them over
        the image and its horizontal mirror."""
        check_positive_int("batch_size", batch_size)
        data = self._prepare(x, None, augment=False, what="x", require_labels=False)
        dist = run_for(self)  # [distributed] each rank predicts its shard; gathered in input order
        loader = dist.eval_loader(data, batch_size)
        model = FlipTTA(self.eval_model) if tta else self.eval_model
        probs = loop.predict_loader(
            model, loader, self.device, CallbackList(list(callbacks or []), tuner=self)
        )
        return dist.gather_rows(probs.reshape(-1, self.num_classes), data)

    # ------------------------------------------------------------------------------------ save/load
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write ``path/model.safetensors`` and ``path/config.json`` atomically; no pickle.

        Under DDP call it on every rank: rank 0 writes, the others wait until the files are complete
        (and raise if rank 0 could not write), so a ``load`` right after sees them."""
        config = self._model_config()
        write = lambda: saving.save_model_folder(path, self.eval_model.state_dict(), config)  # noqa: E731
        run_for(self).run_on_main(write, "save")  # [distributed] rank 0 writes, every rank waits

    def _model_config(self) -> dict[str, Any]:
        """What ``save`` writes next to the weights, and what a resume compares."""
        return {
            "backbone": self._backbone.build_kwargs,
            "spec": self.spec,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "data_config": self.data_config.to_dict(),
            "class_names": self.class_names,
            "strategy": self.strategy.config(),
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device = "auto",
             model: nn.Module | None = None, distributed: bool | None = None) -> FineTuner:  # fmt: skip
        """Rebuild a saved FineTuner without network. ``model=`` supplies the module for custom backbones."""
        state, config = saving.load_model_folder(path)
        num_classes = int(config["num_classes"])
        if model is not None:
            head, groups = config["backbone"].get("head"), config["backbone"].get("groups")
            built = build_backbone(
                model, num_classes, pretrained=False, in_chans=int(config["in_chans"]), head=head,
                groups=groups,
            )  # fmt: skip
        else:
            built = rebuild_backbone(config["backbone"], num_classes)
        built.data_config = DataConfig.from_dict(config["data_config"])
        self = cls.__new__(cls)
        self.seed = None
        self.distributed, self.sync_bn = distributed, False  # [distributed]
        self.device = resolve_device(device)
        self.strategy = resolve_strategy(None)
        self._init_from_backbone(built, num_classes, int(config["in_chans"]), config.get("class_names"))
        try:
            self.model.load_state_dict(state, strict=True)
            self._pretrained_state = backbone_state(self.model, built.head_path)  # the loaded starting point
        except RuntimeError as e:
            raise CheckpointError(
                f"the weights in {str(path)!r} do not fit {config.get('spec')!r} with {num_classes} classes: "
                f"{str(e).splitlines()[0]}; was the folder written by another version or model?"
            ) from e
        return self

    # --------------------------------------------------------------------------------------- find_lr
    def find_lr(self, x: Any = None, y: Any = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_steps: int = 100, batch_size: int = 32, **kwargs: Any) -> LRFinderResult:  # fmt: skip
        """fastai's LR range test under the epoch-0 plan; model, optimizer and RNGs are left exactly as
        they were. Returns the LR/loss curve and ``suggested_lr``; ``.plot()`` draws it. See
        :func:`finetunekit.tools.lr_finder.find_lr` for the other options."""
        from finetunekit.tools.lr_finder import find_lr

        return find_lr(self, x, y, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                       batch_size=batch_size, **kwargs)  # fmt: skip

    # --------------------------------------------------------------------------------------- summary
    def summary(self, epochs: int | None = None) -> str:
        """Per layer group: parameters and, for each epoch of the plan, its LR (or frozen) and BN mode."""
        n_groups = len(self._backbone.groups)
        known = epochs or self._planned_epochs
        horizon = known or max(1, self.strategy.horizon(n_groups))
        plans = [self.plan(e) for e in range(horizon)]
        base_lr = self._compiled.lr if self._compiled else None
        text = format_summary(
            self.spec, self.groups, plans, base_lr, self.strategy, self._norms_by_group,
            open_ended=not known, restarts=self.strategy.schedule_restarts(n_groups),
        )  # fmt: skip
        text = f"{text}\nfeature cache: {feature_cache.cache_status(self._feature_cache)}"
        text += frozen_defaults.summary_line(self._augment_choice)
        gaps = gap_line(self.history)
        return text if gaps is None else f"{text}\ntrain/validation gap, {gaps}"

    # ------------------------------------------------------------------ forgetting and overfitting
    def interpolate(self, alpha: float, bn_data: Any = None) -> FineTuner:
        """WiSE-FT: set the backbone to ``(1 - alpha) * pretrained + alpha * fine-tuned``; keep the head.
        alpha=1 restores the fine-tuned weights exactly; ``bn_data`` re-estimates BatchNorm statistics
        on those images for alpha < 1. See docs/failure_modes.md."""
        wise.interpolate(self, alpha, bn_data=bn_data)
        return self

    def sweep_interpolation(self, x: Any, y: Any = None, alphas: Sequence[float] = wise.DEFAULT_ALPHAS,
                            **kwargs: Any) -> wise.InterpolationSweep:  # fmt: skip
        """Validation metrics per WiSE-FT alpha; leaves the model fine-tuned (``leave_at="best"`` to pick)."""
        return wise.sweep_interpolation(self, x, y, alphas, **kwargs)

    def learning_curve(self, x: Any, y: Any, fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
                       **kwargs: Any) -> _lc.LearningCurve:  # fmt: skip
        """Fine-tune fresh copies (pretrained backbone, new head) on growing stratified fractions of
        ``(x, y)``; validation accuracy per fraction. ``self`` is not modified."""
        return _lc.learning_curve(self, x, y, fractions, **kwargs)

    def __repr__(self) -> str:
        return f"FineTuner({self.spec!r}, num_classes={self.num_classes}, strategy={self.strategy!r})"


def _num_batches(loader: Any) -> int:
    try:
        return max(1, len(loader))
    except TypeError as e:
        raise ConfigError(
            "the training DataLoader has no length (an IterableDataset?); finetunekit needs the number of "
            "batches per epoch for LR schedules: give the dataset a __len__"
        ) from e
