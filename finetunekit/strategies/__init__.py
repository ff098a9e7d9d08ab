"""Fine-tuning strategies: pure per-epoch plans of which layer groups train and at what LR scale."""

from finetunekit.strategies.base import Composed, Plan, Strategy, check_plan, resolve_strategy
from finetunekit.strategies.builtin import (
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
)
from finetunekit.strategies.runner import StrategyRunner, schedule_multiplier

__all__ = [
    "LPFT",
    "Composed",
    "DiscriminativeLR",
    "FrozenBackbone",
    "FullFineTune",
    "GradualUnfreeze",
    "Plan",
    "Strategy",
    "StrategyRunner",
    "check_plan",
    "resolve_strategy",
    "schedule_multiplier",
]
