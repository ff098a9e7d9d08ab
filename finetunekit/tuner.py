"""FineTuner: a pretrained backbone with a new head, trained Keras-style with a fine-tuning strategy.

The object owns the model, its ordered layer groups, the strategy and (after ``compile``) the optimizer
and the EMA. ``fit`` builds a :class:`~finetunekit.training.trainer.Trainer` for that fit and drops it
after; see docs/architecture.md for the layers and the flow of one fit.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from finetunekit._facade.fitting import FitMethods
from finetunekit._facade.inference import InferenceMethods
from finetunekit._facade.persistence import PersistenceMethods
from finetunekit._facade.tool_methods import ToolMethods
from finetunekit.backbones import build_backbone
from finetunekit.errors import ConfigError, NotCompiledError
from finetunekit.strategies import Strategy, resolve_strategy
from finetunekit.tasks import default_metrics, resolve_task, task_for_loss
from finetunekit.techniques.checkpointing import set_grad_checkpointing
from finetunekit.training import compile_config, fsdp
from finetunekit.training.determinism import seed_everything
from finetunekit.validation import check_positive_int, resolve_device


class FineTuner(FitMethods, InferenceMethods, PersistenceMethods, ToolMethods):
    """Fine-tune a timm / torchvision / custom backbone with a Keras-style API (docs/api.md).

    ``FineTuner(backbone, num_classes)`` builds the backbone with a new head and its ordered layer groups
    and applies the strategy's epoch-0 plan at once; then ``compile()``, ``fit()``, ``evaluate()``,
    ``predict()``, ``save()`` / ``FineTuner.load()``, as in Keras. The constructor's arguments are listed
    under ``__init__``.
    """

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
                cutmix: float = 0.0, grad_checkpointing: bool = False,
                progressive_resizing: Any = False) -> FineTuner:  # fmt: skip
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
        ``torch.utils.checkpoint`` per layer group; docs/large_backbones.md). ``progressive_resizing``
        (True or ``ProgressiveResizing(initial_scale, finetune_fraction)``) trains the early epochs on
        smaller images, growing to the full size (docs/performance.md)."""
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

    def __repr__(self) -> str:
        return f"FineTuner({self.spec!r}, num_classes={self.num_classes}, strategy={self.strategy!r})"
