"""Strategy: for epoch e, which layer groups train and at what LR scale (docs/strategies.md).

A strategy is a pure plan: ``plan(n_groups, epoch) -> list[float | None]`` with one entry per layer
group, ordered input -> head; ``None`` means frozen, a float is the group's LR scale. The tuner alone
applies a plan (``requires_grad``, BatchNorm modes, learning rates), so a strategy never touches the
model or the optimizer and works unchanged with any schedule, checkpoint or DDP.

Two optional hooks serve parameter-efficient strategies (LoRA, BitFit), which train only some parameters
of an open group: :meth:`Strategy.trainable_params` names them (the rest of the model is frozen once, at
construction, like a group that never opens), and :meth:`Strategy.prepare` may add parameters to the
model before anything else sees it (LoRA's adapters), so every parameter is in the optimizer from
``compile()`` on. Strategies that define neither behave exactly as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from finetunekit.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from finetunekit.backbones.base import Backbone, LayerGroup

Plan = list[float | None]


class Strategy:
    """Base class. Subclass and override :meth:`plan` (and :meth:`config` if it has arguments).

    ``train_bn``: when False (the default, Keras semantics), BatchNorm layers in frozen groups run in
    inference mode, so their running statistics stay those of the pretrained weights.
    """

    train_bn: bool = False

    def plan(self, n_groups: int, epoch: int) -> Plan:
        raise NotImplementedError(f"{type(self).__name__} must implement plan(n_groups, epoch)")

    def horizon(self, n_groups: int) -> int:
        """The first epoch from which the plan no longer changes (for summaries)."""
        return 1

    def schedule_restarts(self, n_groups: int) -> list[int]:
        """Epochs at which the LR schedule starts a new cycle (a new phase of training). Default none:
        one schedule spans the whole ``fit``. ``LPFT(restart_schedule=True)`` restarts at the
        probe/fine-tune boundary, as fastai's ``fine_tune`` does with its two one-cycles."""
        return []

    def validate(self, n_groups: int) -> None:
        """Raise a ConfigError before training when the strategy cannot apply to ``n_groups`` groups."""
        check_plan(self, self.plan(n_groups, 0), n_groups)

    def prepare(self, backbone: Backbone) -> None:
        """Change the model once, at construction, before its groups enter the optimizer (LoRA injects
        its adapters here and renames the groups' parameters). Default: nothing."""

    def trainable_params(self, model: nn.Module, groups: Sequence[LayerGroup]) -> set[str] | None:
        """Names of the parameters that train while their group is open; None (the default): all of
        them. Parameters outside the set stay frozen for the whole run."""
        return None

    def config(self) -> dict[str, Any]:
        """A JSON-able description, saved with models and compared on resume."""
        return {"name": type(self).__name__, "train_bn": self.train_bn}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({args})"


def check_plan(strategy: Strategy, plan: Sequence[float | None], n_groups: int) -> None:
    """One place that checks what any strategy (built-in or user-written) returns."""
    if len(plan) != n_groups:
        raise ConfigError(
            f"{strategy!r} planned {len(plan)} layer groups but the backbone has {n_groups}; "
            f"return one entry (an LR scale, or None for frozen) per group, ordered input -> head"
        )
    for i, s in enumerate(plan):
        if s is not None and not (isinstance(s, (int, float)) and s >= 0):
            raise ConfigError(
                f"{strategy!r} gave group {i} the LR scale {s!r}; expected a float >= 0 or None (frozen)"
            )


class Composed(Strategy):
    """Several strategies at once: a group trains if every strategy lets it; its scale is the product."""

    def __init__(self, strategies: Sequence[Strategy]):
        if not strategies:
            raise ConfigError("strategy=[] is empty; pass at least one Strategy, or None for FullFineTune()")
        for s in strategies:
            if not isinstance(s, Strategy):
                raise ConfigError(
                    f"strategy list holds {s!r} of type {type(s).__name__}; expected Strategy instances "
                    f"such as FrozenBackbone() or DiscriminativeLR(0.5)"
                )
        self.strategies = list(strategies)
        self.train_bn = any(s.train_bn for s in self.strategies)

    def plan(self, n_groups: int, epoch: int) -> Plan:
        out: Plan = [1.0] * n_groups
        for s in self.strategies:
            p = s.plan(n_groups, epoch)
            check_plan(s, p, n_groups)
            out = [None if a is None or b is None else a * b for a, b in zip(out, p, strict=True)]
        return out

    def horizon(self, n_groups: int) -> int:
        return max(s.horizon(n_groups) for s in self.strategies)

    def schedule_restarts(self, n_groups: int) -> list[int]:
        return sorted({e for s in self.strategies for e in s.schedule_restarts(n_groups)})

    def validate(self, n_groups: int) -> None:
        for s in self.strategies:
            s.validate(n_groups)

    def prepare(self, backbone: Backbone) -> None:
        for s in self.strategies:
            s.prepare(backbone)

    def trainable_params(self, model: nn.Module, groups: Sequence[LayerGroup]) -> set[str] | None:
        """The union of the members' sets (each names what it adds, e.g. [LoRA(), BitFit()] trains the
        adapters, biases and norms); None when no member restricts the parameters."""
        sets = [t for s in self.strategies if (t := s.trainable_params(model, groups)) is not None]
        return set().union(*sets) if sets else None

    def config(self) -> dict[str, Any]:
        return {"name": "Composed", "strategies": [s.config() for s in self.strategies]}

    def __repr__(self) -> str:
        return "[" + ", ".join(repr(s) for s in self.strategies) + "]"
