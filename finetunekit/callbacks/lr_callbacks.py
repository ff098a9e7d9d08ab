"""Callbacks that change the learning rate: ReduceLROnPlateau and LearningRateScheduler (Keras names).

Both act on the tuner's *base* LR (``ft.base_lr``, compile()'s ``lr``), never on the optimizer's
param groups: every group's LR is written each step as ``base_lr * schedule * group scale``, so a
reduction keeps the discriminative ratios between groups and the schedule's shape. (Keras changes
``optimizer.learning_rate``, the same thing for a single-LR model.)
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.early_stopping import _direction
from finetunekit.callbacks.monitor import check_monitor, monitored_value
from finetunekit.callbacks.progbar import log_message
from finetunekit.errors import ConfigError


class ReduceLROnPlateau(Callback):
    """Multiply the base LR by ``factor`` once ``monitor`` has not improved for ``patience`` epochs.

    Keras semantics: an improvement beats the best by more than ``min_delta``; after a reduction,
    ``cooldown`` epochs pass before counting again; the LR never goes below ``min_lr``. Like Keras, each
    ``fit`` starts afresh (best, wait and cooldown reset at ``on_train_begin``), so a second fit (head
    first, then everything) is not judged against the first fit's best; a fit resumed by
    BackupAndRestore keeps the state it restored. A ``monitor`` the logs will not have raises at
    ``on_train_begin``, naming the keys they will have.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0 < factor < 1:
            raise ConfigError(
                f"ReduceLROnPlateau(factor={factor!r}) is invalid; expected 0 < factor < 1, e.g. 0.1"
            )
        if mode not in ("auto", "min", "max"):
            raise ConfigError(f"ReduceLROnPlateau(mode={mode!r}) is invalid; expected 'auto', 'min' or 'max'")
        self.monitor, self.factor, self.patience, self.verbose = monitor, factor, patience, verbose
        self.min_delta, self.cooldown, self.min_lr = abs(min_delta), cooldown, min_lr
        self._minimize = _direction(monitor, mode) == "min"
        self.wait, self.cooldown_counter = 0, 0
        self.best: float | None = None
        self._warned = False
        self._state_loaded = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        check_monitor("ReduceLROnPlateau", self.monitor, self.params)
        if self._state_loaded:  # resumed by BackupAndRestore, which loads our state before this hook
            self._state_loaded = False
            return
        self.wait, self.cooldown_counter, self.best = 0, 0, None

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best - self.min_delta if self._minimize else value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        value = monitored_value("ReduceLROnPlateau", self.monitor, logs or {}, self.params)
        if value is None:
            # Under fit (params["log_keys"] known) a missing key is an epoch without validation.
            if not self._warned and self.params.get("log_keys") is None:
                self._warned = True
                warnings.warn(
                    f"ReduceLROnPlateau monitors {self.monitor!r}, which is not in the logs "
                    f"({', '.join(logs or {}) or 'none'}); set monitor= to one of them.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(float(value)):
            self.best, self.wait = float(value), 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience:
                self._reduce(epoch)

    def _reduce(self, epoch: int) -> None:
        old = self.tuner.base_lr
        if old > self.min_lr:
            new = max(old * self.factor, self.min_lr)
            if new > 0:
                self.tuner.base_lr = new
            if self.verbose > 0:
                log_message(
                    f"Epoch {epoch + 1}: ReduceLROnPlateau reducing the base learning rate to {new:.4g}."
                )
        self.cooldown_counter, self.wait = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": self.best}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.wait = int(state.get("wait", 0))
        self.cooldown_counter = int(state.get("cooldown_counter", 0))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self._state_loaded = True


class LearningRateScheduler(Callback):
    """At each epoch's start set the base LR to ``schedule(epoch, lr)`` (or ``schedule(epoch)``), Keras'
    signature; ``lr`` is the current base LR. It multiplies with compile()'s ``schedule``: use
    ``compile(schedule="constant")`` for exactly the Keras behaviour."""

    def __init__(self, schedule: Callable[..., float], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise ConfigError(
                f"LearningRateScheduler(schedule={schedule!r}) is not callable; expected a function "
                "(epoch, lr) -> new lr"
            )
        self.schedule, self.verbose = schedule, verbose
        self._two_args = _takes_two_args(schedule)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        lr = self.schedule(epoch, self.tuner.base_lr) if self._two_args else self.schedule(epoch)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(
                f"LearningRateScheduler's schedule returned {lr!r} for epoch {epoch}; expected a finite "
                "float > 0"
            )
        self.tuner.base_lr = float(lr)
        if self.verbose > 0:
            log_message(
                f"Epoch {epoch + 1}: LearningRateScheduler setting the base learning rate to {lr:.4g}."
            )


def _takes_two_args(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)
