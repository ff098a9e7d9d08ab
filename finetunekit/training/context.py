"""What a training step reads (:class:`StepConfig`, frozen) and what the loop changes (:class:`LoopState`).

A fit builds one StepConfig per schedule cycle (a strategy may restart the schedule, as LPFT does) and
one LoopState for the whole fit. Keeping them apart says which values a step may change: only the
loop state's, and everything in it that a resume needs is registered with the fit's
:class:`~finetunekit.training.state.TrainingState`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from finetunekit.metrics import MetricTracker

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class StepConfig:
    """Everything one schedule cycle's steps use and never change."""

    optimizer: torch.optim.Optimizer
    loss_fn: Loss
    schedule: Callable[[float], float]  # LR multiplier of progress in the cycle (finetunekit.schedules)
    metrics: Any  # finetunekit.metrics.MetricSet: names in the order the user gave
    device: torch.device
    steps_per_epoch: int
    total_steps: int  # steps in this schedule cycle
    train_bn: bool
    stepper: Any  # finetunekit.training.step.Stepper: precision, accumulation, clipping, EMA
    norms_by_group: list[list[nn.Module]] = field(default_factory=list)
    first_epoch: int = 0  # where this schedule cycle starts
    sync_metrics: bool = False  # [distributed] epoch metrics summed over ranks
    regularizer: Callable[[], torch.Tensor] | None = None  # e.g. L2SP: added to the loss for backward
    batch_transform: Any = None  # e.g. BatchMixer: (x, y, (epoch, step)) -> (x, soft targets)
    loss_weighting: Any = None  # fit(class_weight= / sample_weight=): finetunekit.data.weights.LossWeighting
    input_resize: Any = None  # compile(progressive_resizing=...): (x, epoch) -> x at the epoch's size

    def progress(self, epoch: int, step: int) -> float:
        """Where batch ``step`` of ``epoch`` lies in this cycle, in [0, 1]."""
        return ((epoch - self.first_epoch) * self.steps_per_epoch + step) / max(1, self.total_steps)


@dataclass
class LoopState:
    """Where the loop is and what it carries between steps."""

    model: nn.Module  # what the step calls: the model, its DDP wrapper, or the feature cache's suffix
    base_lr: float
    nonfinite: str = "raise"  # compile(on_nonfinite=...): see finetunekit.training.nonfinite
    epoch: int = 0
    step: int = 0
    tracker: MetricTracker | None = None
    epoch_start: dict[str, torch.Tensor] = field(default_factory=dict)  # RNG states the epoch began in
    skipped: int = 0  # consecutive steps skipped for a non-finite loss
    stop_requested: bool = False
    step_applied: bool = True  # False after a step skipped for a non-finite loss
    nonfinite_state: dict[str, torch.Tensor] | None = None
    buffer_backup: list[torch.Tensor] | None = None


class FitParts(Protocol):
    """What checkpointing (finetunekit.training.parts and train_state) reads of the fit in progress:
    the :class:`~finetunekit.training.trainer.Trainer` provides it."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: Any
    mixer: Any
    callbacks: Any
    loader: Any
    loop: LoopState
    stepper: Any
    dist: Any  # finetunekit.training.distributed.DistributedRun: .active under DDP / FSDP
    state: Any  # finetunekit.training.state.TrainingState
    saved_generator: torch.Tensor | None
    model_config: dict[str, Any]
    compile_kwargs: dict[str, Any] | None  # compile()'s arguments, fingerprinted by backups
    steps_per_epoch: int
    epochs: int

    @property
    def step_config(self) -> StepConfig: ...

    def set_base_lr(self, value: float) -> None: ...

    def use_schedule_phase(self, epoch: int) -> None: ...

    def measured_weights(self) -> dict[str, Any]: ...
