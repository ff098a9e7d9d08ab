"""FineTuner: a pretrained backbone with a new head, trained Keras-style with a fine-tuning strategy.

The object owns the model, its ordered layer groups, the strategy and (after ``compile``) the optimizer
and the EMA. ``fit`` builds a :class:`~finetunekit.training.trainer.Trainer` for that fit and drops it
after; see docs/architecture.md for the layers and the flow of one fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finetunekit import _assembly as assembly
from finetunekit.backbones import build_backbone
from finetunekit.backbones.base import Backbone, DataConfig
from finetunekit.backbones.snapshot import backbone_state
from finetunekit.callbacks import Callback, History
from finetunekit.callbacks.interrupt import report_interrupt
from finetunekit.callbacks.progbar import resolve_verbose
from finetunekit.callbacks.stop_flag import StopTrainingFlag
from finetunekit.data import PreparedData, prepare_data
from finetunekit.data.files import with_paths
from finetunekit.data.weights import Imbalance
from finetunekit.distributed.failure import guard
from finetunekit.errors import ConfigError, NotCompiledError
from finetunekit.metrics.thresholds import check_threshold
from finetunekit.saving import model_folder as saving
from finetunekit.strategies import Plan, Strategy, check_plan, lora, resolve_strategy
from finetunekit.strategies.apply import (
    apply_plan,
    effective_plan,
    freeze_outside,
    group_params,
    norm_modules_by_group,
    set_frozen_norms_to_eval,
)
from finetunekit.tasks import check_tta, default_metrics, output_activation, resolve_task, task_for_loss
from finetunekit.techniques.checkpointing import set_grad_checkpointing
from finetunekit.tools import learning_curve as _lc
from finetunekit.tools import wise
from finetunekit.tools.calibrate import check_temperature, with_temperature
from finetunekit.training import (
    compile_config,
    feature_cache,
    fit_options,
    frozen_defaults,
    fsdp,
    inference,
    preflight,
    setup,
)
from finetunekit.training.compile_config import CompileConfig
from finetunekit.training.compute import Compute, ComputeConfig
from finetunekit.training.determinism import deterministic_mode, seed_everything
from finetunekit.training.distributed import run_for
from finetunekit.training.trainer import FitOutcome, ModelView, Trainer
from finetunekit.validation import check_fit_args, check_positive_int, resolve_device

if TYPE_CHECKING:
    from finetunekit.tools.calibrate import CalibrationReport
    from finetunekit.tools.export import ExportReport
    from finetunekit.tools.interpret import Interpretation
    from finetunekit.tools.lr_finder import LRFinderResult


class FineTuner:
    """Fine-tune a timm / torchvision / custom backbone with a Keras-style API (docs/api.md).

    ``FineTuner(backbone, num_classes)`` builds the backbone with a new head and its ordered layer groups
    and applies the strategy's epoch-0 plan at once; then ``compile()``, ``fit()``, ``evaluate()``,
    ``predict()``, ``save()`` / ``FineTuner.load()``, as in Keras. The constructor's arguments are listed
    under ``__init__``.
    """

    # item 4: True on the FineTuner or on its nn.Module (Keras' self.model.stop_training) stops a fit
    stop_training = StopTrainingFlag()

    def __init__(self, backbone: str | nn.Module, num_classes: int, *, pretrained: bool = True,
                 weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
                 strategy: Strategy | Sequence[Strategy] | None = None,
                 image_size: int | tuple[int, int] | None = None, in_chans: int = 3,
                 device: str | torch.device = "auto", seed: int | None = None, head: str | None = None,
                 class_names: Sequence[str] | None = None,
                 groups: Sequence[str | Sequence[str]] | None = None, distributed: bool | str | None = None,
                 sync_bn: bool = False, multi_label: bool = False, task: str | None = None):  # fmt: skip
        """Build the model: the backbone, a new ``num_classes`` head, its layer groups, the strategy.

        Args:
            backbone: ``"timm/<name>"``, ``"torchvision/<name>"``, ``"hf-hub:org/repo"``, a bare name
                (timm first, then torchvision), or any ``nn.Module`` (then ``head=`` may name its classifier).
            num_classes: outputs of the new head (a fresh, small-initialised layer).
            pretrained: load the registry's weights (downloaded once, then from the cache); offline without
                a cache this fails at once with ``PretrainedWeightsUnavailableError`` (set
                ``HF_HUB_OFFLINE=1`` to skip network checks). Ignored when ``weights`` is given.
            weights: local weights for the backbone instead: a .pth / .pt / .safetensors path or a state
                dict; the classifier is excluded; keys are matched exactly, without wrapper prefixes, or by
                position when every shape agrees; never a silent partial load.
            strategy: a Strategy, a list of them (composed), or None for ``FullFineTune()``. Its epoch-0
                plan applies now: ``ft.model``'s ``requires_grad`` and ``ft.groups[i].trainable`` show it.
            image_size: input size for uint8 images (int or (h, w)); default the weights' own. ViT-like
                timm models are built at this size.
            in_chans: input channels; a pretrained stem is adapted (RGB filters summed for 1 channel).
            device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
            seed: makes head init, shuffling, the validation split and augmentation reproducible.
            head: attribute path of an ``nn.Module`` backbone's classifier (e.g. ``"classifier.1"``), when
                it cannot be found on its own.
            class_names: names of the classes, stored by ``save``; taken from folder names when you fit
                on a folder of class subfolders.
            groups: your own layer groups, input -> head: one attribute path or glob (or a list of them)
                per group, e.g. ``["stem", "layer[12]", "layer[34]"]``; every parameter exactly once.
            distributed: None runs DDP when launched by torchrun (or a process group exists), True
                insists, False never (each process trains alone). See docs/distributed.md.
                ``"fsdp"``: FSDP2 sharding under torchrun for backbones too large to replicate
                (docs/large_backbones.md).
            sync_bn: under DDP, turn BatchNorm into SyncBatchNorm (CUDA only).
            multi_label: multi-hot targets, BCE-with-logits, per-class sigmoid ``predict`` and a decision
                :attr:`threshold` (docs/tasks.md); the same as ``task="multi_label"``.
            task: ``"classification"`` (default), ``"multi_label"`` or ``"regression"`` (float targets,
                raw ``predict`` outputs); ``compile(loss="mse")`` without a task also means regression.
        """
        check_positive_int("num_classes", num_classes)
        self.task, self._task_given = resolve_task(task, multi_label), task is not None or multi_label
        check_positive_int("in_chans", in_chans)
        self.seed = seed
        fsdp.check_mode(distributed)
        self.distributed, self.sync_bn = distributed, bool(sync_bn)  # [distributed]
        if seed is not None:
            seed_everything(seed)
        self.device = resolve_device(device)
        self.strategy = resolve_strategy(strategy)
        built = build_backbone(backbone, num_classes, pretrained=pretrained and weights is None,
                               weights=weights, in_chans=in_chans, image_size=image_size, head=head,
                               groups=groups)  # fmt: skip
        self._init_from_backbone(built, num_classes, in_chans, class_names)

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
        self.base_lr  # noqa: B018  # NotCompiledError before compile()
        assert self._compiled is not None
        self._compiled.lr = float(value)
        if self._trainer is not None:
            self._trainer.set_base_lr(float(value))

    def compile(self, optimizer: str | Callable[..., torch.optim.Optimizer] = "adamw", lr: float = 2e-3,
                weight_decay: float = 0.01,
                loss: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = "auto",
                metrics: Sequence[Any] | None = None, schedule: Any = "one_cycle",
                label_smoothing: float = 0.0, schedule_kwargs: Mapping[str, Any] | None = None,
                on_nonfinite: str = "raise", *,
                precision: str = "32", channels_last: bool = False, compile_model: bool | str = False,
                accumulate_steps: int = 1, clip_grad_norm: float | None = None,
                clip_grad_value: float | None = None, ema_decay: float | None = None,
                ema_warmup: bool = False, regularizer: Any = None, mixup: float = 0.0,
                cutmix: float = 0.0, grad_checkpointing: bool = False) -> FineTuner:  # fmt: skip
        """Choose optimizer, LR, loss, metrics and LR schedule; every option is checked here, before any
        step. Every layer group enters the optimizer now, frozen or not, so nothing is added mid-run.
        ``lr=2e-3`` with one-cycle is measured in benchmarks/strategies.py (docs/strategies.md).
        ``on_nonfinite``: what a NaN or infinite loss does, "raise", "skip" or "stop".

        Compute options (docs/performance.md), used by every forward pass of fit, evaluate, predict and
        find_lr: ``precision`` "32" | "bf16" | "16" (autocast; fp16 adds a GradScaler whose skipped steps
        ``amp_skipped_steps`` counts), ``channels_last``, ``compile_model`` (torch.compile; eager with a
        warning when it cannot). ``accumulate_steps`` (one optimizer step per that many batches),
        ``clip_grad_norm`` / ``clip_grad_value``, ``ema_decay`` (an EMA of the weights, which validation,
        evaluate, predict and every save use; ``ema_warmup=True`` ramps its decay up as timm's does).
        ``regularizer=L2SP(alpha, beta)`` replaces weight decay (docs/failure_modes.md); ``mixup`` /
        ``cutmix`` are Beta concentrations (0 = off) for mixing training batches with soft targets.
        Every option that keeps state resumes exactly (docs/architecture.md). ``loss="auto"`` is the
        task's loss (cross-entropy, BCE-with-logits for multi_label, MSE for regression); ``metrics``
        takes names ("accuracy", "top5", "f1_macro", "auroc", "ece", "map", ...) or torchmetrics objects,
        logged under the names given (docs/tasks.md). ``grad_checkpointing=True`` recomputes activations
        in the backward pass instead of keeping them (timm's ``set_grad_checkpointing``, else
        ``torch.utils.checkpoint`` per layer group; docs/large_backbones.md)."""
        given = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.task = task_for_loss(self.task, self._task_given, loss)
        chosen = default_metrics(self.task) if metrics is None else metrics
        options = {**given, "metrics": chosen, "task": self.task, "num_classes": self.num_classes}
        if not isinstance(grad_checkpointing, bool):
            raise ConfigError(f"grad_checkpointing={grad_checkpointing!r} is invalid; expected True or False")
        if self.distributed == fsdp.MODE:  # [distributed] shard before the optimizer holds the parameters
            fsdp.shard(self, regularizer, ema_decay)
        done = compile_config.configure(self.model, self._backbone, self.device, options)
        self._compiled, self.optimizer, self._compute, self._ema = done
        self._checkpointing = set_grad_checkpointing(self.model, self._backbone, grad_checkpointing)
        self._compile_kwargs = given  # learning_curve compiles its fresh copies the same way
        return self

    @guard  # [distributed] one rank failing stops all, naming the cause
    def fit(self, x: Any = None, y: Any = None, batch_size: int = 32, epochs: int = 1,
            verbose: int | str = "auto", callbacks: Sequence[Callback] | None = None,
            validation_split: float = 0.0, validation_data: Any = None, shuffle: bool = True,
            initial_epoch: int = 0, augment: Any = True, deterministic: bool = False,
            num_workers: int | None = None, cache_features: bool = True, steps_per_epoch: int | None = None,
            validation_freq: int | Sequence[int] = 1, class_weight: Any = None, sample_weight: Any = None,
            sampling_weights: Any = None) -> History:  # fmt: skip
        """Train for ``epochs`` epochs (Keras semantics) and return the History. Event order::

            restore (a BackupAndRestore holding a backup: every registered part of the training state)
            on_train_begin
            for epoch: plan applied (requires_grad, BN modes); on_epoch_begin (not for an epoch resumed
                mid-way); per batch: on_train_batch_begin, LR write, step (skipped for a non-finite
                loss), on_train_batch_end; validation (on_test_begin / on_test_end); on_epoch_end(logs
                with val_ keys)
            on_train_end

        Checkpointing callbacks run after all others in each hook. ``deterministic=True`` turns on
        torch's deterministic algorithms for this fit only. ``num_workers``: DataLoader workers (None:
        in-process for in-memory data, a few for image files); augmentation is seeded per sample, so it
        does not change results. ``cache_features``: while the bottom groups stay frozen and nothing is
        augmented, run them once and train the rest on cached outputs (docs/performance.md).
        ``augment=True`` while only the head trains in every epoch (FrozenBackbone) trains it on
        un-augmented, cached features (the linear-probe choice; said in the log and summary());
        ``augment="always"`` augments every epoch, frozen or not. ``steps_per_epoch``: train each epoch
        on the first N batches of its (reshuffled) pass, as Keras;
        ``validation_freq``: validate every N epochs, or after the listed 1-based epochs.

        Data and tasks (docs/data.md, docs/tasks.md): ``augment`` is True/False, a preset ("light",
        "randaugment", "trivialaugment", "autoaugment"), a timm auto_augment string ("rand-m9-mstd0.5"),
        ``finetunekit.data.augment.Augment(...)`` (random erasing) or a torchvision v2 transform.
        ``class_weight`` ("balanced" or {class: weight}) or ``sample_weight`` (one per sample) weight the
        training loss per sample (Keras semantics); ``sampling_weights`` ("balanced" or one per sample)
        draws training samples by weight instead, seeded by (seed, epoch)."""
        verbose = check_fit_args(batch_size, epochs, initial_epoch, validation_split, verbose)
        freq = fit_options.check_validation_freq(validation_freq)
        if self.distributed == fsdp.MODE:
            fsdp.check_callbacks(callbacks)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None and self.optimizer is not None and self._compute is not None
        if self.seed is not None:
            seed_everything(self.seed)
        dist = run_for(self)  # [distributed] DDP / sharding when launched by torchrun; else pass-through
        imbalance = Imbalance(class_weight, sample_weight, sampling_weights, self.num_classes, self.task)
        self._augment_choice = self._choose_augment(augment, x, initial_epoch, epochs, cache_features,
                                                    dist.active, sample_weight, steps_per_epoch)  # fmt: skip
        frozen_defaults.announce(self._augment_choice, verbose)
        train, val = setup.fit_data(self._prepare, x, y, validation_split=validation_split,
                                    validation_data=validation_data, augment=self._augment_choice.augment,
                                    split_seed=lambda: dist.shared_seed(self.seed),
                                    attach=imbalance.attach)  # fmt: skip
        self._compiled.metrics.threshold = self._threshold
        if self.class_names is None and train.class_names is not None:
            self.class_names = list(train.class_names)
        args = setup.FitArgs(batch_size, epochs, verbose, list(callbacks or []), shuffle, num_workers,
                             cache_features, steps_per_epoch, freq,
                             imbalance.loss_weighting(train, self._compiled.loss_fn))  # fmt: skip
        trainer = setup.build_trainer(
            self, view=self._model_view(), optimizer=self.optimizer, compiled=self._compiled,
            compute=self._compute, ema=self._ema, seed=self.seed, num_classes=self.num_classes,
            spec=self.spec, model_config=self._model_config(), train=train, val=val, dist=dist, args=args,
            bn_training=preflight.training_norms(self.strategy, self._norms_by_group, epochs),
        )  # fmt: skip
        self._planned_epochs, self.stop_training, self._trainer = epochs, False, trainer
        try:
            with deterministic_mode(deterministic):
                trainer.fit(initial_epoch)
        except KeyboardInterrupt:  # keep the completed epochs, say how to resume
            self.history = trainer.callbacks.history
            loop = trainer.loop
            report_interrupt(trainer.callbacks, loop.epoch, loop.step if loop.tracker is not None else None,
                             epochs, trainer.steps_per_epoch)  # fmt: skip
            raise
        finally:
            self._trainer, self._last_fit = None, trainer.outcome()
        self.history = trainer.callbacks.history
        return trainer.callbacks.history

    def _choose_augment(self, augment: Any, x: Any, first: int, epochs: int, cache_features: bool,
                        ddp: bool, sample_weight: Any, steps_per_epoch: int | None) -> Any:  # fmt: skip
        """fit's augmentation: ``augment=True`` while only the head trains means cached, un-augmented
        features when the cache can run (training.frozen_defaults)."""
        assert self._compiled is not None
        mixing = bool(self._compiled.mixup or self._compiled.cutmix)
        cache_off = feature_cache.disabled_reason(cache_features, ddp, mixing)
        if sample_weight is not None or steps_per_epoch is not None:
            cache_off = cache_off or "per-sample weights or a partial pass"
        plans = [self.plan(e) for e in range(first, epochs)]
        return frozen_defaults.choose_augment(augment, plans, x, cache_off=cache_off,
                                              train_bn=self.strategy.train_bn)  # fmt: skip

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

    @guard  # [distributed]
    def evaluate(self, x: Any = None, y: Any = None, batch_size: int = 32, verbose: int | str = 0,
                 callbacks: Sequence[Callback] | None = None,
                 tta: bool = False) -> dict[str, float]:  # fmt: skip
        """Loss and metrics on labelled data, as Python floats. ``tta=True`` averages the probabilities
        of each image and its horizontal mirror (the loss is that of the averaged prediction)."""
        check_positive_int("batch_size", batch_size)
        if self._compiled is None:
            self.compile()
        assert self._compiled is not None
        check_tta(tta, self.task)
        self._compiled.metrics.threshold = self._threshold
        data = self._prepare(x, y, augment=False, what="x")
        self._head_at_init = preflight.warn_if_untrained(self.model, self._head_at_init, "evaluate()")
        return inference.evaluate(self.eval_model, data, run_for(self), batch_size, owner=self,
                                  compute=self._compute_path(), loss_fn=self._compiled.loss_fn,
                                  metrics=self._compiled.metrics, callbacks=callbacks or [],
                                  tta=tta, verbose=resolve_verbose("evaluate", verbose))  # fmt: skip

    @guard  # [distributed]
    def predict(self, x: Any, batch_size: int = 32, verbose: int | str = 0,
                callbacks: Sequence[Callback] | None = None, tta: bool = False,
                return_paths: bool = False) -> Any:  # fmt: skip
        """Class probabilities (N, num_classes) in input order: softmax, per-class sigmoid for
        multi_label, raw outputs for regression (finetunekit.tasks). ``tta=True`` averages them over the
        image and its mirror. ``x`` may also be an image file, a flat folder, a list of paths, a PIL image
        or a list of arrays of any sizes; ``return_paths=True`` returns ``(rows, file names)``."""
        check_positive_int("batch_size", batch_size)
        check_tta(tta, self.task)
        data = self._prepare(x, None, augment=False, what="x", require_labels=False)
        self._head_at_init = preflight.warn_if_untrained(self.model, self._head_at_init, "predict()")
        model = with_temperature(self.eval_model, self.temperature)  # calibrate()'s temperature
        rows = inference.predict(model, data, run_for(self), batch_size, owner=self,
                                 compute=self._compute_path(), num_classes=self.num_classes,
                                 callbacks=callbacks or [], tta=tta,
                                 verbose=resolve_verbose("predict", verbose),
                                 activation=lambda out: output_activation(self.task, out))  # fmt: skip
        return with_paths(rows, data, return_paths)

    @property
    def threshold(self) -> float | list[float]:
        """The multi-label decision threshold: one float or one per class (saved with the model)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | Sequence[float]) -> None:
        self._threshold = check_threshold(value, self.num_classes)

    def tune_thresholds(self, x: Any, y: Any = None, per_class: bool = True, batch_size: int = 32) -> Any:
        """Set :attr:`threshold` to the per-class (or one global) threshold maximizing F1 on validation
        data ``(x, y)``; returns it. Metrics and ``save`` use it from then on (docs/tasks.md)."""
        from finetunekit.tools.thresholds import tune_thresholds

        self.threshold = tune_thresholds(self, x, y, per_class, batch_size)
        return self._threshold

    def save(self, path: str | os.PathLike[str], *, adapters_only: bool = False) -> None:
        """Write ``path/model.safetensors``, ``config.json`` and ``manifest.json`` atomically; no pickle.
        With LoRA the adapters are merged (a plain model folder, loadable without peft);
        ``adapters_only=True`` writes just the adapters and the head (``load_adapters`` reads them).

        Under DDP call it on every rank: rank 0 writes, the others wait until the files are complete
        (and raise if rank 0 could not write), so a ``load`` right after sees them."""
        extra: dict[str, Any] = {}
        if fsdp.is_sharded(self.model):  # [distributed] every rank gathers, rank 0 writes
            state = fsdp.full_state_dict(self.model)
        else:
            state, extra = lora.state_to_save(self.eval_model, self._backbone.head_path, adapters_only)
        config = {**self._model_config(), **extra}
        write = lambda: saving.save_model_folder(path, state, config)  # noqa: E731
        run_for(self).run_on_main(write, "save")  # [distributed] rank 0 writes, every rank waits

    def load_adapters(self, path: str | os.PathLike[str]) -> FineTuner:
        """Load a ``save(path, adapters_only=True)`` folder into this FineTuner's LoRA adapters and head."""
        state, _ = saving.load_model_folder(path)
        lora.load_adapters(self.model, self._backbone.head_path, state, str(path))
        return self

    def _model_config(self) -> dict[str, Any]:
        """What ``save`` writes next to the weights, and what a resume compares."""
        config = assembly.model_config(
            self._backbone, self.num_classes, self.in_chans, self.class_names, self.strategy
        )
        return {**config, "temperature": self.temperature, "task": self.task, "threshold": self._threshold}

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | torch.device = "auto",
             model: nn.Module | None = None, distributed: bool | str | None = None,
             verify: bool = True) -> FineTuner:  # fmt: skip
        """Rebuild a saved FineTuner without network. ``model=`` supplies the module for custom backbones.
        ``verify=False`` loads a folder without a manifest (values are still checked; docs/reliability.md)."""
        built, state, config = assembly.backbone_from_folder(path, model, verify=verify)
        self = cls.__new__(cls)
        self.seed, self.distributed, self.sync_bn = None, distributed, False  # [distributed]
        self.device, self.strategy = resolve_device(device), resolve_strategy(None)
        self._init_from_backbone(built, int(config["num_classes"]), int(config["in_chans"]),
                                 config.get("class_names"))  # fmt: skip
        assembly.load_weights(self.model, state, path, config)
        self._pretrained_state = backbone_state(self.model, built.head_path)  # the loaded starting point
        self._head_at_init = None  # [persist] a loaded model counts as trained
        self.temperature = check_temperature(config.get("temperature", 1.0))
        self.task, self._task_given = resolve_task(config.get("task"), False), True
        self.threshold = config.get("threshold", 0.5)
        return self

    def find_lr(self, x: Any = None, y: Any = None, *, start_lr: float = 1e-7, end_lr: float = 10.0,
                num_steps: int = 100, batch_size: int = 32, **kwargs: Any) -> LRFinderResult:  # fmt: skip
        """fastai's LR range test under the epoch-0 plan; model, optimizer and RNGs are left exactly as
        they were. Returns the LR/loss curve and ``suggested_lr``; ``.plot()`` draws it. See
        :func:`finetunekit.tools.lr_finder.find_lr` for the other options."""
        from finetunekit.tools.lr_finder import find_lr

        return find_lr(self, x, y, start_lr=start_lr, end_lr=end_lr, num_steps=num_steps,
                       batch_size=batch_size, **kwargs)  # fmt: skip

    def summary(self, epochs: int | None = None) -> str:
        """Per layer group: parameters and, for each epoch of the plan, its LR (or frozen) and BN mode."""
        n_groups, known = len(self._backbone.groups), epochs or self._planned_epochs
        plans = [self.plan(e) for e in range(known or max(1, self.strategy.horizon(n_groups)))]
        status = self._last_fit.cache_status if self._last_fit is not None else feature_cache.DEFAULT_STATUS
        base_lr = self._compiled.lr if self._compiled else None
        restarts = self.strategy.schedule_restarts(n_groups)
        trains = [sum(p.numel() for p in ps) for ps in self._params_by_group]
        text = assembly.summary_text(self.spec, self.groups, plans, base_lr, self.strategy,
                                     self._norms_by_group, not known, restarts, status, self.history,
                                     trains=trains, checkpointing=self._checkpointing)  # fmt: skip
        return text + frozen_defaults.summary_line(self._augment_choice)

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

    # ------------------------------------------------ [ship] understand and ship: see docs/interpret.md ...
    def interpret(self, x: Any, y: Any = None, batch_size: int = 64) -> Interpretation:
        """Confusion matrix, most-confused pairs, top losses and a per-class report on labelled data."""
        from finetunekit.tools.interpret import interpret

        return interpret(self, x, y, batch_size=batch_size)

    def calibrate(self, x: Any, y: Any = None, batch_size: int = 64, n_bins: int = 15) -> CalibrationReport:
        """Fit the softmax temperature on held-out data (saved with the model, used by predict)."""
        from finetunekit.tools.calibrate import calibrate

        return calibrate(self, x, y, batch_size=batch_size, n_bins=n_bins)

    def export(self, path: str | os.PathLike[str], format: str = "onnx", preprocessing: bool = True,
               **kwargs: Any) -> ExportReport:  # fmt: skip
        """Write an ONNX / TorchScript / ExportedProgram file and check it against the eager model."""
        from finetunekit.tools.export import export

        return export(self, path, format=format, preprocessing=preprocessing, **kwargs)

    def save_for_hub(self, folder: str | os.PathLike[str], metrics: Mapping[str, float] | None = None) -> Any:
        """A timm-compatible folder (weights, config, model card) that ``timm.create_model`` loads."""
        from finetunekit.tools.hub import save_for_hub

        return save_for_hub(self, folder, metrics=metrics)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload :meth:`save_for_hub`'s folder to the Hugging Face Hub; returns the repo URL."""
        from finetunekit.tools.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def __repr__(self) -> str:
        return f"FineTuner({self.spec!r}, num_classes={self.num_classes}, strategy={self.strategy!r})"
