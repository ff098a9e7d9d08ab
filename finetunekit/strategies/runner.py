"""Drive a strategy from your own training loop (plain PyTorch, Lightning, Accelerate) without ``fit``.

:class:`StrategyRunner` is a thin front for the same functions ``FineTuner.fit`` uses
(:func:`finetunekit.strategies.apply.build_param_groups`, ``apply_plan``, ``set_frozen_norms_to_eval``,
``write_lrs``), so a strategy behaves identically in and out of ``fit``: every group in the optimizer
from the start, frozen groups' grads and optimizer state cleared, BN of frozen groups in eval mode,
``lr = base_lr * multiplier * group_scale`` written in one place.

"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from finetunekit.errors import NotCompiledError
from finetunekit.strategies import apply as _optim
from finetunekit.strategies.base import Plan, Strategy, check_plan
from finetunekit.strategies.builtin import resolve_strategy

if TYPE_CHECKING:
    from finetunekit.backbones.base import LayerGroup


class StrategyRunner:
    """A strategy's param groups and per-epoch plan for a loop you write yourself.

    ::

        runner = StrategyRunner.from_tuner(ft)                  # or StrategyRunner(model, groups, strategy)
        opt = torch.optim.AdamW(runner.param_groups(weight_decay=0.01), lr=1e-3)
        for epoch in range(epochs):
            runner.begin_epoch(epoch, opt)                        # requires_grad, BN modes
            for step, (x, y) in enumerate(loader):
                runner.write_lrs(opt, base_lr=1e-3, multiplier=schedule(progress))
                ...forward, backward, opt.step()...
    """

    def __init__(
        self,
        model: nn.Module,
        groups: Sequence[LayerGroup],
        strategy: Strategy | Sequence[Strategy] | None = None,
        *,
        no_weight_decay: set[str] | None = None,
    ):
        self.model = model
        self.groups = list(groups)
        self.strategy = resolve_strategy(strategy)
        self.strategy.validate(len(self.groups))
        self.no_weight_decay = set(no_weight_decay or ())
        trainable = self.strategy.trainable_params(model, self.groups)  # BitFit, LoRA: a subset
        _optim.freeze_outside(model, trainable)
        self.params_by_group = _optim.group_params(model, self.groups, trainable)
        self.norms_by_group = _optim.norm_modules_by_group(model, self.groups)
        self.current_plan: Plan | None = None

    @classmethod
    def from_tuner(cls, ft: Any) -> StrategyRunner:
        """A FineTuner's model (with its new head), layer groups, strategy and no-decay set. (Typed Any:
        strategies sit below the tuner and never import it.)"""
        backbone = ft._backbone
        return cls(ft.model, backbone.groups, ft.strategy, no_weight_decay=backbone.no_weight_decay)

    def param_groups(self, weight_decay: float = 0.01) -> list[dict[str, Any]]:
        """Every layer group's params (two param groups each: with and without weight decay), tagged
        ``group_index`` and ``name``; pass them to any ``torch.optim`` optimizer."""
        return _optim.build_param_groups(self.model, self.groups, self.no_weight_decay, weight_decay)

    def plan(self, epoch: int) -> Plan:
        """The strategy's plan for ``epoch``: per group an LR scale, or None when frozen."""
        plan = self.strategy.plan(len(self.groups), epoch)
        check_plan(self.strategy, plan, len(self.groups))
        return _optim.effective_plan(plan, self.params_by_group)

    def begin_epoch(self, epoch: int, optimizer: torch.optim.Optimizer, train: bool = True) -> Plan:
        """Apply ``epoch``'s plan: ``requires_grad``, clearing grads and optimizer state of groups that
        become frozen, then (``train=True``) ``model.train()`` with frozen groups' BN back in eval mode.
        Call it at the start of every epoch, before the first step."""
        self.current_plan = self.plan(epoch)
        _optim.apply_plan(self.current_plan, self.params_by_group, optimizer)
        if train:
            self.train_mode()
        return self.current_plan

    def train_mode(self) -> None:
        """``model.train()`` and frozen groups' BN in eval mode. Call it wherever your loop (or your
        framework, e.g. after validation) calls ``model.train()``, which flips every BN back."""
        self.model.train()
        self.set_frozen_norms_to_eval()

    def set_frozen_norms_to_eval(self) -> None:
        """Only the BN part of :meth:`train_mode`, for frameworks that call ``model.train()`` themselves."""
        _optim.set_frozen_norms_to_eval(self._plan(), self.norms_by_group, self.strategy.train_bn)

    def write_lrs(self, optimizer: torch.optim.Optimizer, base_lr: float, multiplier: float = 1.0) -> None:
        """Set every param group's LR to ``base_lr * multiplier * scale`` (0 when frozen). Call it before
        every ``optimizer.step()``; ``multiplier`` is your schedule's value (see ``schedule_multiplier``)."""
        _optim.write_lrs(optimizer, base_lr, multiplier, self._plan())

    def _plan(self) -> Plan:
        if self.current_plan is None:
            raise NotCompiledError(
                "StrategyRunner has no plan yet; call runner.begin_epoch(epoch, optimizer) at the start of "
                "each epoch, before write_lrs() or train_mode()"
            )
        return self.current_plan


def schedule_multiplier(schedule: Any, total_steps: int, **kwargs: Any) -> Any:
    """A schedule as finetunekit uses it: a name ("one_cycle", "cosine", ...), a function of progress, or
    a ``torch.optim.lr_scheduler`` class; call it with ``progress`` in [0, 1] (and call ``.step()``
    after each optimizer step when it has one, as torch schedulers do)."""
    from finetunekit.schedules import get_schedule

    return get_schedule(schedule, total_steps, **kwargs)
