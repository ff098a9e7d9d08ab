"""The built-in strategies. Each is a few lines of plan; the mechanism lives in the tuner."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from finetunekit.errors import ConfigError
from finetunekit.strategies.base import Composed, Plan, Strategy


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid; expected an integer >= 1")
    return value


def _decay(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(
            f"decay={value!r} is invalid; expected a float in (0, 1], e.g. 0.5 halves the LR for each "
            f"layer group further from the head"
        )
    return float(value)


class FullFineTune(Strategy):
    """Every group trains at the base LR: the classic full fine-tuning."""

    def __init__(self, train_bn: bool = False):
        self.train_bn = train_bn  # no group is frozen, so this only matters when composed

    def plan(self, n_groups: int, epoch: int) -> Plan:
        return [1.0] * n_groups


class FrozenBackbone(Strategy):
    """Only the new head trains (a linear probe); the backbone and its BN statistics stay as loaded."""

    def __init__(self, train_bn: bool = False):
        self.train_bn = train_bn

    def plan(self, n_groups: int, epoch: int) -> Plan:
        return [None] * (n_groups - 1) + [1.0]


class GradualUnfreeze(Strategy):
    """ULMFiT's gradual unfreezing: epoch 0 trains the head; every ``every`` epochs one more group
    opens, from the top down. ``milestones={epoch: n_open_groups}`` gives the schedule explicitly.
    ``decay`` additionally scales open groups by ``decay ** depth_from_head``."""

    def __init__(
        self,
        every: int = 1,
        decay: float | None = None,
        train_bn: bool = False,
        milestones: Mapping[int, int] | None = None,
    ):
        self.every = _positive_int("every", every)
        self.decay = None if decay is None else _decay(decay)
        self.train_bn = train_bn
        self.milestones = None if milestones is None else self._check_milestones(milestones)
        if self.milestones is not None and every != 1:
            raise ConfigError(
                f"GradualUnfreeze got every={every} and milestones={dict(milestones or {})}; pass one of "
                f"them: every=k opens a group every k epochs, milestones gives the openings explicitly"
            )

    @staticmethod
    def _check_milestones(milestones: Mapping[int, int]) -> dict[int, int]:
        out = {}
        for e, n in dict(milestones).items():
            if not isinstance(e, int) or e < 0 or not isinstance(n, int) or n < 1:
                raise ConfigError(
                    f"milestones entry {e!r}: {n!r} is invalid; expected {{epoch >= 0: open groups >= 1}}, "
                    f"e.g. {{0: 1, 2: 3, 4: 99}}"
                )
            out[e] = n
        ordered = dict(sorted(out.items()))
        counts = list(ordered.values())
        if counts != sorted(counts):
            raise ConfigError(
                f"milestones={ordered} closes groups again; gradual unfreezing only opens them, so the "
                f"number of open groups must not decrease with the epoch (write a Strategy subclass to "
                f"refreeze on purpose)"
            )
        return ordered

    def n_open(self, n_groups: int, epoch: int) -> int:
        if self.milestones is None:
            return min(n_groups, 1 + epoch // self.every)
        opened = 1
        for e, n in self.milestones.items():
            if e <= epoch:
                opened = n
        return max(1, min(n_groups, opened))

    def plan(self, n_groups: int, epoch: int) -> Plan:
        first_open = n_groups - self.n_open(n_groups, epoch)
        plan: Plan = []
        for i in range(n_groups):
            scale = 1.0 if self.decay is None else self.decay ** (n_groups - 1 - i)
            plan.append(scale if i >= first_open else None)
        return plan

    def horizon(self, n_groups: int) -> int:
        if self.milestones is not None:
            return max(self.milestones, default=0) + 1
        return (n_groups - 1) * self.every + 1

    def config(self) -> dict[str, Any]:
        return {
            "name": "GradualUnfreeze",
            "every": self.every,
            "decay": self.decay,
            "train_bn": self.train_bn,
            "milestones": None
            if self.milestones is None
            else {str(k): v for k, v in self.milestones.items()},
        }


class DiscriminativeLR(Strategy):
    """Layer-wise LR decay: group i trains at ``decay ** (depth from the head)`` (fastai's
    ``slice(lo, hi)``, BEiT/timm ``layer_decay``). ``scales=[...]`` gives one scale per group instead."""

    def __init__(self, decay: float = 0.5, scales: Sequence[float] | None = None, train_bn: bool = False):
        self.decay = _decay(decay)
        self.scales = None if scales is None else [float(s) for s in scales]
        self.train_bn = train_bn

    def plan(self, n_groups: int, epoch: int) -> Plan:
        if self.scales is not None:
            if len(self.scales) != n_groups:
                raise ConfigError(
                    f"DiscriminativeLR(scales=...) has {len(self.scales)} entries but the backbone has "
                    f"{n_groups} layer groups; give one scale per group (see ft.groups), input -> head"
                )
            return list(self.scales)
        return [self.decay ** (n_groups - 1 - i) for i in range(n_groups)]

    def config(self) -> dict[str, Any]:
        return {
            "name": "DiscriminativeLR",
            "decay": self.decay,
            "scales": self.scales,
            "train_bn": self.train_bn,
        }


class LPFT(Strategy):
    """Linear probe, then fine-tune (Kumar et al. 2022): ``probe_epochs`` epochs train only the head on
    frozen features, then every group trains at ``finetune_scale`` x the LR, so a good head keeps the
    pretrained features from being distorted early.

    Defaults come from benchmarks/strategies.py (docs/strategies.md): ``finetune_scale=0.5`` (fastai's
    ``fine_tune`` also halves the LR after unfreezing) beat 0.1 by ~0.45 accuracy on a domain-shifted
    few-shot task, where the features must move; and one schedule over both phases
    (``restart_schedule=False``) beat a fresh cycle per phase (0.889 vs 0.818): the probe spends the
    warm-up, and the backbone opens near the peak LR. ``restart_schedule=True`` gives each phase its
    own warm-up/decay cycle (as fastai's two one-cycles), for a gentler start of fine-tuning.
    """

    def __init__(
        self,
        probe_epochs: int = 1,
        finetune_scale: float = 0.5,
        train_bn: bool = False,
        restart_schedule: bool = False,
    ):
        self.probe_epochs = _positive_int("probe_epochs", probe_epochs)
        if not isinstance(finetune_scale, (int, float)) or finetune_scale <= 0:
            raise ConfigError(f"finetune_scale={finetune_scale!r} is invalid; expected a float > 0, e.g. 0.1")
        self.finetune_scale = float(finetune_scale)
        self.train_bn = train_bn
        self.restart_schedule = bool(restart_schedule)

    def plan(self, n_groups: int, epoch: int) -> Plan:
        if epoch < self.probe_epochs:
            return [None] * (n_groups - 1) + [1.0]
        return [self.finetune_scale] * n_groups

    def horizon(self, n_groups: int) -> int:
        return self.probe_epochs + 1

    def schedule_restarts(self, n_groups: int) -> list[int]:
        return [self.probe_epochs] if self.restart_schedule else []

    def config(self) -> dict[str, Any]:
        return {
            "name": "LPFT",
            "probe_epochs": self.probe_epochs,
            "finetune_scale": self.finetune_scale,
            "train_bn": self.train_bn,
            "restart_schedule": self.restart_schedule,
        }


def resolve_strategy(strategy: Strategy | Sequence[Strategy] | None) -> Strategy:
    """None -> FullFineTune(); a list -> Composed; a Strategy as is; anything else a clear error."""
    if strategy is None:
        return FullFineTune()
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, (list, tuple)):
        return strategy[0] if len(strategy) == 1 and isinstance(strategy[0], Strategy) else Composed(strategy)
    if isinstance(strategy, type) and issubclass(strategy, Strategy):
        raise ConfigError(f"strategy={strategy.__name__} is a class; pass an instance: {strategy.__name__}()")
    raise ConfigError(
        f"strategy={strategy!r} is not a Strategy; expected e.g. FullFineTune(), FrozenBackbone(), "
        f"GradualUnfreeze(every=1), DiscriminativeLR(0.5), LPFT(probe_epochs=2) or a list of them"
    )
