"""What ``compile()`` decides, checked: optimizer, LR, loss, metrics, schedule, compute options, EMA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from finetunekit.errors import ConfigError
from finetunekit.metrics import check_metrics
from finetunekit.schedules import get_schedule
from finetunekit.strategies.apply import build_param_groups, make_optimizer
from finetunekit.tasks import CLASSIFICATION, builtin_loss
from finetunekit.techniques.mixing import check_mix_alpha
from finetunekit.techniques.resizing import check_progressive_resizing
from finetunekit.training import nonfinite
from finetunekit.training.compute import Compute, ComputeConfig, check_compute
from finetunekit.training.step import make_ema


@dataclass
class CompileConfig:
    optimizer: Any
    lr: float
    weight_decay: float
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: Any  # finetunekit.metrics.MetricSet
    schedule: Any
    schedule_kwargs: dict[str, Any]
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    on_nonfinite: str = "raise"
    regularizer: Any = None  # e.g. L2SP; a callable () -> scalar tensor added to the training loss
    mixup: float = 0.0
    cutmix: float = 0.0
    progressive_resizing: Any = None  # finetunekit.techniques.resizing.ProgressiveResizing when on


def resolve_loss(
    loss: Any, label_smoothing: float, task: str = CLASSIFICATION
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A loss name for ``task`` (see :mod:`finetunekit.tasks`; ``"auto"`` is the task's default) or
    the user's callable ``(outputs, targets) -> scalar``."""
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not 0 <= label_smoothing < 1
    ):
        raise ConfigError(
            f"label_smoothing={label_smoothing!r} is invalid; expected a float in [0, 1), e.g. 0.1"
        )
    if isinstance(loss, str):
        return builtin_loss(loss, task, label_smoothing)
    if callable(loss):
        return loss
    raise ConfigError(
        f"loss={loss!r} is unknown; expected a name such as 'auto', 'cross_entropy', 'bce' or 'mse', or a "
        "callable (outputs, targets) -> scalar tensor"
    )


class Compiled(NamedTuple):
    """What ``FineTuner.compile`` sets: the checked options, the optimizer, the compute path, the EMA."""

    config: CompileConfig
    optimizer: torch.optim.Optimizer
    compute: Compute
    ema: Any


def _check_number(name: str, value: Any, minimum: float, strict: bool, example: str) -> float:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or (value <= minimum if strict else value < minimum):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"{name}={value!r} is invalid; expected a float {bound}, e.g. {example}")
    return float(value)


def configure(model: nn.Module, backbone: Any, device: torch.device, options: dict[str, Any]) -> Compiled:
    """Check every ``compile()`` option (``options`` holds them all, by name, plus the model's ``task``
    and ``num_classes``, which loss and metric names depend on) before anything trains,
    then build the optimizer with every layer group in it (frozen or not), the Compute every forward
    pass goes through, and the EMA."""
    o = options
    nonfinite.check_policy(o["on_nonfinite"])
    compute = check_compute(device, o["precision"], o["channels_last"], o["compile_model"],
                            o["accumulate_steps"], o["clip_grad_norm"], o["clip_grad_value"],
                            o["ema_decay"], o["ema_warmup"])  # fmt: skip
    lr = _check_number("lr", o["lr"], 0, True, "1e-3")
    weight_decay = _check_number("weight_decay", o["weight_decay"], 0, False, "0.01")
    metrics = [o["metrics"]] if isinstance(o["metrics"], str) else o["metrics"]
    mixup, cutmix = check_mix_alpha("mixup", o["mixup"]), check_mix_alpha("cutmix", o["cutmix"])
    regularizer = o["regularizer"]
    if regularizer is not None and not callable(regularizer):
        raise ConfigError(f"regularizer={regularizer!r} is not callable; expected e.g. L2SP(0.01, 0.01)")
    schedule_kwargs = dict(o["schedule_kwargs"] or {})
    get_schedule(o["schedule"], 1, **schedule_kwargs)  # fail now, not at fit
    decay = 0.0 if getattr(regularizer, "replaces_weight_decay", False) else weight_decay
    groups = build_param_groups(model, backbone.groups, backbone.no_weight_decay, decay)
    optimizer = make_optimizer(o["optimizer"], groups, lr)
    config = CompileConfig(
        optimizer=o["optimizer"], lr=lr, weight_decay=weight_decay,
        loss_fn=resolve_loss(o["loss"], o["label_smoothing"], o["task"]),
        metrics=check_metrics(metrics, o["task"], o["num_classes"]),
        schedule=o["schedule"], schedule_kwargs=schedule_kwargs, compute=compute,
        on_nonfinite=o["on_nonfinite"], regularizer=regularizer, mixup=mixup, cutmix=cutmix,
        progressive_resizing=check_progressive_resizing(o.get("progressive_resizing")),
    )  # fmt: skip
    ema = make_ema(model, compute.ema_decay, compute.ema_warmup) if compute.ema_decay else None
    return Compiled(config, optimizer, Compute(compute, model, device), ema)
