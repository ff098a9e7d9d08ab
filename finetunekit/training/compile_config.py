"""What ``compile()`` decided, checked: optimizer, LR, loss, metrics, schedule and compute options."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from finetunekit.errors import ConfigError
from finetunekit.training.step import ComputeConfig


@dataclass
class CompileConfig:
    optimizer: Any
    lr: float
    weight_decay: float
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metrics: list[str]
    schedule: Any
    schedule_kwargs: dict[str, Any]
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    on_nonfinite: str = "raise"
    regularizer: Any = None  # e.g. L2SP; a callable () -> scalar tensor added to the training loss
    mixup: float = 0.0
    cutmix: float = 0.0


def resolve_loss(loss: Any, label_smoothing: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, (int, float))
        or not 0 <= label_smoothing < 1
    ):
        raise ConfigError(
            f"label_smoothing={label_smoothing!r} is invalid; expected a float in [0, 1), e.g. 0.1"
        )
    if loss in ("cross_entropy", "categorical_crossentropy", "sparse_categorical_crossentropy"):
        return nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    if callable(loss) and not isinstance(loss, str):
        return loss
    raise ConfigError(
        f"loss={loss!r} is unknown; expected 'cross_entropy' or a callable (logits, labels) -> scalar tensor"
    )
