"""What kind of problem a FineTuner solves, and the decisions that follow from it, in one place.

The task decides how targets are checked and stored, which loss ``compile(loss="auto")`` picks, which
metrics make sense and what ``predict`` returns:

==================  =========================  ====================  ==========================
task                targets                    default loss          predict returns
==================  =========================  ====================  ==========================
``classification``  int class index per image  cross-entropy         softmax probabilities
``multi_label``     multi-hot (N, num_classes)  BCE-with-logits       per-class sigmoid
``regression``      float (N,) / (N, k)        mean squared error    raw outputs
==================  =========================  ====================  ==========================

Keeping it here (a low layer) lets the tuner, the training loop and the data pipeline ask the same
question and get the same answer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from finetunekit.errors import ConfigError

CLASSIFICATION = "classification"
MULTI_LABEL = "multi_label"
REGRESSION = "regression"
TASKS = (CLASSIFICATION, MULTI_LABEL, REGRESSION)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_CE = ("cross_entropy", "categorical_crossentropy", "sparse_categorical_crossentropy")
_BCE = ("bce", "binary_crossentropy", "bce_with_logits")
_REGRESSION_LOSSES: dict[str, Callable[[], nn.Module]] = {
    "mse": nn.MSELoss,
    "mean_squared_error": nn.MSELoss,
    "l1": nn.L1Loss,
    "mae": nn.L1Loss,
    "mean_absolute_error": nn.L1Loss,
    "huber": nn.HuberLoss,
    "smooth_l1": nn.SmoothL1Loss,
}
LOSS_NAMES = ("auto", *_CE, *_BCE, *_REGRESSION_LOSSES)


def resolve_task(task: str | None, multi_label: bool) -> str:
    """``FineTuner(task=..., multi_label=...)`` -> one of :data:`TASKS`; contradictions raise."""
    if not isinstance(multi_label, bool):
        raise ConfigError(f"multi_label={multi_label!r} is invalid; expected True or False.")
    if task is None:
        return MULTI_LABEL if multi_label else CLASSIFICATION
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is unknown; expected one of {list(TASKS)} (or leave it None).")
    if multi_label and task != MULTI_LABEL:
        raise ConfigError(
            f"multi_label=True contradicts task={task!r}; pass only multi_label=True, or task={task!r}."
        )
    return task


def task_for_loss(task: str, explicit: bool, loss: Any) -> str:
    """A regression loss name on a FineTuner whose task was not given makes it a regression task
    (``FineTuner(..., num_classes=1).compile(loss="mse")``); an explicit task is never overridden."""
    if not explicit and isinstance(loss, str) and loss in _REGRESSION_LOSSES:
        return REGRESSION
    return task


class SmoothedBCE(nn.Module):
    """BCE-with-logits on targets smoothed towards 0.5 (``label_smoothing`` as in timm's BCE loss)."""

    def __init__(self, smoothing: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.smoothing, self.reduction = smoothing, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(logits.dtype)
        if self.smoothing:
            target = target * (1 - self.smoothing) + 0.5 * self.smoothing
        return nn.functional.binary_cross_entropy_with_logits(logits, target, reduction=self.reduction)


class RegressionLoss(nn.Module):
    """A regression loss that reshapes (N,) targets to the (N, k) outputs first: ``MSELoss`` on (N, 1)
    outputs and (N,) targets otherwise broadcasts to an N×N difference and trains on nonsense."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.reduction = getattr(inner, "reduction", "mean")

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.to(outputs.dtype)
        if target.shape != outputs.shape and target.numel() == outputs.numel():
            target = target.reshape(outputs.shape)
        self.inner.reduction = self.reduction  # type: ignore[assignment]  # set by LossWeighting's copy
        return self.inner(outputs, target)


def _wrong_loss(loss: str, task: str) -> ConfigError:
    fix = {
        CLASSIFICATION: "loss='cross_entropy'",
        MULTI_LABEL: "loss='bce' (or 'auto')",
        REGRESSION: "loss='mse', 'l1' or 'huber'",
    }[task]
    return ConfigError(
        f"loss={loss!r} does not fit task={task!r}; use {fix} or a callable (outputs, targets)."
    )


def builtin_loss(loss: str, task: str, label_smoothing: float) -> nn.Module:
    """The loss module a name stands for on this task; ``auto`` is the task's default."""
    if loss == "auto":
        loss = {CLASSIFICATION: "cross_entropy", MULTI_LABEL: "bce", REGRESSION: "mse"}[task]
    if loss in _CE:
        if task != CLASSIFICATION:
            raise _wrong_loss(loss, task)
        return nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
    if loss in _BCE:
        if task != MULTI_LABEL:
            raise _wrong_loss(loss, task)
        return SmoothedBCE(float(label_smoothing))
    if loss in _REGRESSION_LOSSES:
        if task != REGRESSION:
            raise _wrong_loss(loss, task)
        if label_smoothing:
            raise ConfigError(f"label_smoothing={label_smoothing} has no meaning for regression; leave it 0.")
        return RegressionLoss(_REGRESSION_LOSSES[loss]())
    raise ConfigError(
        f"loss={loss!r} is unknown; expected one of {list(LOSS_NAMES)} or a callable (logits, targets) -> "
        "scalar tensor."
    )


def output_activation(task: str, logits: torch.Tensor) -> torch.Tensor:
    """What ``predict`` returns for raw model outputs: softmax, per-class sigmoid or the outputs."""
    if task == CLASSIFICATION:
        return torch.softmax(logits.float(), dim=1)
    if task == MULTI_LABEL:
        return torch.sigmoid(logits.float())
    return logits.float()


def is_classification(task: str) -> bool:
    """Single- or multi-label: outputs are per-class scores (metrics, thresholds, probabilities)."""
    return task in (CLASSIFICATION, MULTI_LABEL)


def default_metrics(task: str) -> list[str]:
    """``compile(metrics=None)``: accuracy for classification (per label for multi_label), MAE else."""
    return ["mae"] if task == REGRESSION else ["accuracy"]


def check_tta(tta: bool, task: str) -> None:
    """Flip TTA averages softmax probabilities, which is only right for single-label classification."""
    if tta and task != CLASSIFICATION:
        raise ConfigError(
            f"tta=True averages softmax probabilities, which is only defined for task='classification', not "
            f"{task!r}; call predict without tta, or average the predictions of x and its mirror yourself."
        )
