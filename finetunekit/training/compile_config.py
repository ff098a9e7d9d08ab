"""What ``compile()`` decided, checked: optimizer, LR, loss, metrics, schedule and compute options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from finetunekit.errors import ConfigError
from finetunekit.tasks import CLASSIFICATION, builtin_loss
from finetunekit.training.step import ComputeConfig


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
