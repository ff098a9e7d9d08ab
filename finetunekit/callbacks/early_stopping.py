"""EarlyStopping with Keras 3 semantics, plus resumable state."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.monitor import check_monitor, monitored_value
from finetunekit.callbacks.progbar import log_message
from finetunekit.errors import ConfigError

_MODES = ("auto", "min", "max")
# Names (after a "val_" prefix) where higher is better. Keras 2 used only "acc"; Keras 3 asks the
# compiled metric objects. We have names only, so a short list covers the common higher-is-better
# metrics; everything else (loss, error, mae, ...) is minimised. Pass mode= to be explicit.
_HIGHER_IS_BETTER = ("acc", "auc", "precision", "recall", "f1", "fmeasure", "iou", "dice")


def _direction(monitor: str, mode: str) -> str:
    if mode != "auto":
        return mode
    name = monitor.lower().removeprefix("val_")
    return "max" if any(token in name for token in _HIGHER_IS_BETTER) else "min"


class EarlyStopping(Callback):
    """Stop training when ``monitor`` has stopped improving, as ``keras.callbacks.EarlyStopping``.

    Each epoch from ``start_from_epoch`` on, ``wait`` grows by one; an improvement of more than
    ``min_delta`` over the best value so far resets it (and, with ``baseline``, only if the value also
    beats the baseline). When ``wait >= patience`` (never at epoch 0), ``tuner.stop_training`` is set and
    ``stopped_epoch`` records the epoch. ``mode="auto"`` maximises names containing ``acc``, ``auc``,
    ``precision``, ``recall``, ``f1``, ``iou``, ``dice`` and minimises everything else.

    ``restore_best_weights=True`` keeps an in-memory copy of the best epoch's ``state_dict`` (on the
    model's device) and loads it back at the end of training, also when training ran to the last epoch
    without stopping (Keras 3 behaviour), so the model you get is the one the monitor liked best.

    A ``monitor`` that the fit's logs will not have raises ConfigError at ``on_train_begin``, naming the
    keys they will have (Keras warns every epoch and never stops). ``verbose="auto"`` (the default)
    says when it stopped and which epoch's weights it restored whenever ``fit`` shows progress
    (``fit(verbose=1 or 2)``); 0 keeps it quiet, 1 always speaks.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0,
        patience: int = 0,
        verbose: int | str = "auto",
        mode: str = "auto",
        baseline: float | None = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            # Keras only warns and falls back to "auto"; a silent guess at the direction is worse.
            raise ConfigError(
                f"EarlyStopping(mode={mode!r}) is not a valid mode; expected one of {list(_MODES)}. "
                f"Use 'min' for losses/errors, 'max' for accuracy-like metrics, or 'auto'."
            )
        if patience < 0:
            raise ConfigError(f"EarlyStopping(patience={patience}) must be >= 0.")
        if verbose != "auto" and (isinstance(verbose, bool) or not isinstance(verbose, int)):
            raise ConfigError(
                f"EarlyStopping(verbose={verbose!r}) is invalid; expected 'auto' (follow fit's verbose), "
                "0 (quiet) or 1 (print when it stops and restores)"
            )
        self.monitor = monitor
        self.patience = patience
        self.verbose = verbose
        self.mode = mode
        self.baseline = baseline
        self.restore_best_weights = restore_best_weights
        self.start_from_epoch = start_from_epoch
        direction = _direction(monitor, mode)
        self.monitor_op: Callable[[Any, Any], bool] = operator.lt if direction == "min" else operator.gt
        # Keras stores min_delta signed so that "current - min_delta" must beat the reference.
        self.min_delta = -abs(min_delta) if direction == "min" else abs(min_delta)
        self._reset()
        self._state_loaded = False
        self._warned_missing = False

    @property
    def speaks(self) -> bool:
        """Whether to print: ``verbose="auto"`` follows fit's ``verbose``, on the main process only."""
        from finetunekit.distributed import is_main_process

        level = self.params.get("verbose", 0) if self.verbose == "auto" else self.verbose
        return bool(level) and is_main_process()

    def _reset(self) -> None:
        self.wait = 0
        self.stopped_epoch = 0
        self.best: float | None = None
        self.best_epoch = 0
        self.best_weights: dict[str, torch.Tensor] | None = None

    # -- hooks -----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Logs | None = None) -> None:
        check_monitor("EarlyStopping", self.monitor, self.params)
        if self._state_loaded:
            # Resuming (BackupAndRestore loaded our state before this fit began): keep it, once.
            self._state_loaded = False
            return
        self._reset()

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        current = self._monitor_value(logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            # So there is something to restore even if no epoch ever beats the baseline.
            self.best_weights = self._copy_weights()
            self.best_epoch = epoch
        self.wait += 1
        if self._is_improvement(current, self.best):
            self.best = current
            self.best_epoch = epoch
            if self.restore_best_weights:
                self.best_weights = self._copy_weights()
            if self.baseline is None or self._is_improvement(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.tuner.stop_training = True

    def on_train_end(self, logs: Logs | None = None) -> None:
        if self.stopped_epoch > 0 and self.speaks:
            best = "none" if self.best is None else f"{self.best:.4g}"
            epochs = f"{self.wait} epoch{'s' if self.wait != 1 else ''}"
            log_message(
                f"Epoch {self.stopped_epoch + 1}: early stopping: {self.monitor} did not improve for "
                f"{epochs} (best {best} at epoch {self.best_epoch + 1})"
            )
        if self.restore_best_weights and self.best_weights is not None:
            if self.speaks:
                log_message(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.load_state_dict(self.best_weights)

    # -- helpers ---------------------------------------------------------------------------------------
    def _monitor_value(self, logs: Logs | None) -> float | None:
        logs = logs or {}
        value = monitored_value("EarlyStopping", self.monitor, logs or {}, self.params)
        # Under fit (log_keys known) a missing key is an epoch that did not validate (validation_freq).
        if value is None and not self._warned_missing and self.params.get("log_keys") is None:
            self._warned_missing = True
            warnings.warn(
                f"EarlyStopping is conditioned on metric {self.monitor!r}, which is not in the logs. "
                f"Available metrics are: {', '.join(logs) or '(none)'}. Set monitor= to one of them "
                "(val_ metrics need validation data).",
                RuntimeWarning,
                stacklevel=3,
            )
        return None if value is None else float(value)

    def _is_improvement(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        return bool(self.monitor_op(value - self.min_delta, reference))

    def _copy_weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Counters and best value, JSON-friendly.

        The best *weights* are not included: they are a full model copy, and checkpoint files already
        hold weights. After a resume with ``restore_best_weights=True``, the weights of the first epoch
        evaluated after resuming stand in until an epoch improves on the restored ``best``.
        """
        return {
            "wait": self.wait,
            "best": self.best,
            "stopped_epoch": self.stopped_epoch,
            "best_epoch": self.best_epoch,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.wait = int(state.get("wait", 0))
        best = state.get("best")
        self.best = None if best is None else float(best)
        self.stopped_epoch = int(state.get("stopped_epoch", 0))
        self.best_epoch = int(state.get("best_epoch", 0))
        self._state_loaded = True
