"""LR schedules as functions of training progress in [0, 1] returning a multiplier of the base LR.

Because a schedule is only a multiplier, the tuner writes every group's LR in one place as
``base_lr * schedule(progress) * group_scale``: discriminative ratios stay exact at every step and a
group opened mid-run joins the schedule where it is, with no jump. A ``torch.optim.lr_scheduler`` class
or a ``timm.scheduler`` class is supported the same way: it runs on a one-parameter shadow optimizer
whose base LR is 1.0 and only its multiplier is read (timm's: stepped once per training batch with the
explicit batch count, ``t_initial`` in steps and defaulting to the schedule cycle's length).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any, TypeGuard

import torch

from finetunekit.errors import ConfigError

Schedule = Callable[[float], float]


def constant() -> Schedule:
    return lambda progress: 1.0


def one_cycle(pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """fastai/torch one-cycle: cosine warm-up from base/div to base, then cosine down to base/(div*final)."""
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)

    def f(progress: float) -> float:
        if progress < pct_start:
            return _cos_interp(start, 1.0, progress / pct_start)
        return _cos_interp(1.0, end, (progress - pct_start) / max(1e-12, 1 - pct_start))

    return f


def cosine(warmup: float = 0.05, min_factor: float = 0.0) -> Schedule:
    """Linear warm-up over the first ``warmup`` fraction, then cosine decay to ``min_factor``."""

    def f(progress: float) -> float:
        if warmup > 0 and progress < warmup:
            return (progress + 1e-3) / (warmup + 1e-3)
        return _cos_interp(1.0, min_factor, (progress - warmup) / max(1e-12, 1 - warmup))

    return f


def slanted_triangular(cut_frac: float = 0.1, ratio: float = 32.0) -> Schedule:
    """ULMFiT (Howard & Ruder 2018): short linear rise over ``cut_frac``, long linear decay."""

    def f(progress: float) -> float:
        p = progress / cut_frac if progress < cut_frac else 1 - (progress - cut_frac) / (1 - cut_frac)
        return (1 + p * (ratio - 1)) / ratio

    return f


def _cos_interp(a: float, b: float, t: float) -> float:
    t = min(1.0, max(0.0, t))
    return b + (a - b) * (1 + math.cos(math.pi * t)) / 2


class _ShadowMultiplier:
    """A scheduler class stepping a shadow optimizer whose base LR is 1.0: its LR is the multiplier, so
    the user's scheduler logic is used exactly while the tuner keeps writing the real LRs."""

    def __init__(self, scheduler_cls: type, kwargs: dict[str, Any]) -> None:
        self._opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        try:
            self._sched = scheduler_cls(self._opt, **kwargs)
        except TypeError as e:
            raise ConfigError(
                f"schedule={scheduler_cls.__name__} could not be built with {kwargs}: {e}; pass its "
                f"arguments with compile(schedule_kwargs={{...}})"
            ) from e
        self._step = 0

    def __call__(self, progress: float) -> float:
        return float(self._opt.param_groups[0]["lr"])

    def state_dict(self) -> dict[str, Any]:
        # The multiplier is the shadow optimizer's LR, which the scheduler's own state does not hold.
        return {"scheduler": self._sched.state_dict(), "step": self._step, "lr": self(0.0)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sched.load_state_dict(state["scheduler"])
        self._step = state["step"]
        if "lr" in state:
            self._opt.param_groups[0]["lr"] = float(state["lr"])


class TorchSchedulerMultiplier(_ShadowMultiplier):
    """A ``torch.optim.lr_scheduler`` class as a multiplier (``total_steps`` is not passed: torch
    schedulers take their own lengths, e.g. ``T_max``)."""

    def __init__(self, scheduler_cls: type, total_steps: int, /, **kwargs: Any):
        super().__init__(scheduler_cls, kwargs)

    def step(self) -> None:
        self._opt.step()  # a no-op (no grads) that keeps torch's "step order" check satisfied
        self._sched.step()
        self._step += 1


class TimmSchedulerMultiplier(_ShadowMultiplier):
    """A ``timm.scheduler`` class (``CosineLRScheduler``, ``StepLRScheduler``, ...) as a multiplier,
    stepped once per training batch with the explicit count (timm's ``step_update(num_updates)``);
    ``t_initial`` defaults to ``total_steps``, the length of the schedule cycle in batches."""

    def __init__(self, scheduler_cls: type, total_steps: int, /, **kwargs: Any):
        if kwargs.get("t_in_epochs", False):
            raise ConfigError(
                f"schedule={scheduler_cls.__name__} with t_in_epochs=True: finetunekit steps timm schedulers "
                "once per training batch, so their lengths (t_initial, warmup_t, decay_t) are in steps; drop "
                "t_in_epochs (it defaults to False here) and give the lengths in steps"
            )
        kwargs["t_in_epochs"] = False
        if "t_initial" in inspect.signature(scheduler_cls).parameters:
            kwargs.setdefault("t_initial", max(1, total_steps))
        super().__init__(scheduler_cls, kwargs)

    def step(self) -> None:
        self._step += 1
        self._sched.step_update(num_updates=self._step)


def _is_timm_scheduler(schedule: Any) -> TypeGuard[type]:
    if not (isinstance(schedule, type) and schedule.__module__.startswith("timm.")):
        return False
    from timm.scheduler.scheduler import Scheduler

    return issubclass(schedule, Scheduler)


def schedule_phase(restarts: list[int], epochs: int, epoch: int) -> tuple[int, int]:
    """The ``[start, end)`` epochs of the schedule cycle that ``epoch`` belongs to. ``restarts`` are the
    epochs where a strategy starts a new cycle (e.g. LPFT's fine-tuning phase); progress runs 0 -> 1
    within each cycle, so each phase gets the whole warm-up and decay."""
    start, end = 0, epochs
    for r in sorted(restarts):
        if 0 < r < epochs:
            if r <= epoch:
                start = r
            else:
                end = r
                break
    return start, end


SCHEDULES: dict[str, Callable[..., Schedule]] = {
    "constant": constant,
    "one_cycle": one_cycle,
    "cosine": cosine,
    "slanted_triangular": slanted_triangular,
}


def get_schedule(schedule: str | Schedule | type, total_steps: int, /, **kwargs: Any) -> Schedule:
    """Resolve compile()'s ``schedule=``: a name, a function of progress, a torch / timm scheduler class."""
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule={schedule!r} is unknown; expected one of {sorted(SCHEDULES)}, a function of "
                f"progress in [0, 1], or a torch.optim.lr_scheduler / timm.scheduler class"
            )
        try:
            return SCHEDULES[schedule](**kwargs)
        except TypeError as e:
            raise ConfigError(f"schedule={schedule!r} does not take {kwargs}: {e}") from e
    if isinstance(schedule, type) and issubclass(schedule, torch.optim.lr_scheduler.LRScheduler):
        return TorchSchedulerMultiplier(schedule, total_steps, **kwargs)
    if _is_timm_scheduler(schedule):
        return TimmSchedulerMultiplier(schedule, total_steps, **kwargs)
    if callable(schedule) and not isinstance(schedule, type):
        return schedule
    raise ConfigError(
        f"schedule={schedule!r} is not usable; expected one of {sorted(SCHEDULES)}, a function of "
        f"progress in [0, 1] returning an LR multiplier, or a torch.optim.lr_scheduler / timm.scheduler class"
    )
