"""Fine-tuning strategies: pure per-epoch plans of which layer groups train and at what LR scale, and
parameter-efficient ones (LoRA, BitFit, NormOnly) that train a subset of each open group."""

from finetunekit.strategies.base import Composed, Plan, Strategy, check_plan
from finetunekit.strategies.bitfit import BitFit, NormOnly
from finetunekit.strategies.builtin import (
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
    resolve_strategy,
)
from finetunekit.strategies.lora import LoRA
from finetunekit.strategies.runner import StrategyRunner, schedule_multiplier

__all__ = [
    "LPFT",
    "BitFit",
    "Composed",
    "DiscriminativeLR",
    "FrozenBackbone",
    "FullFineTune",
    "GradualUnfreeze",
    "LoRA",
    "NormOnly",
    "Plan",
    "Strategy",
    "StrategyRunner",
    "check_plan",
    "resolve_strategy",
    "schedule_multiplier",
]
