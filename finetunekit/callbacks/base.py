"""The callback base class and the list that dispatches hooks to callbacks, in Keras vocabulary.

Keras users already know ``on_epoch_end(epoch, logs)`` and ``self.model.stop_training = True``; we keep
those names so their callbacks port unchanged. ``self.model`` here is the ``nn.Module`` and
``self.tuner`` the FineTuner; ``stop_training = True`` on either stops the fit
(:class:`finetunekit.callbacks.stop_flag.StopTrainingFlag`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit._types import RunView

Logs = dict[str, Any]

#: Every hook a callback can implement, in the order a ``fit`` with validation calls them.
HOOK_NAMES: tuple[str, ...] = (
    "on_train_begin",
    "on_epoch_begin",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_test_begin",
    "on_test_batch_begin",
    "on_test_batch_end",
    "on_test_end",
    "on_epoch_end",
    "on_train_end",
    "on_predict_begin",
    "on_predict_batch_begin",
    "on_predict_batch_end",
    "on_predict_end",
    # Keras 2 aliases of the train-batch hooks, kept so ported callbacks still fire.
    "on_batch_begin",
    "on_batch_end",
)


class Callback:
    """Base of every callback: all hooks are no-ops, so a subclass overrides only what it needs.

    ``self.tuner`` is the :class:`~finetunekit.FineTuner` running the loop, ``self.model`` its
    ``nn.Module`` and ``self.params`` the Keras dict ``{"epochs", "steps", "verbose"}`` (inside ``fit``
    also ``"log_keys"``, the keys the epoch logs will have). ``self.model.stop_training = True`` (Keras)
    or ``self.tuner.stop_training = True`` stops training after the current batch. During ``fit``,
    ``self.run`` is a :class:`~finetunekit._types.RunView` of the fit in progress (position, stop,
    checkpoint state); None outside a fit. Callbacks with state worth resuming override
    :meth:`state_dict` / :meth:`load_state_dict` with JSON-friendly values
    (checkpoints hold JSON and tensors, never pickles).
    A callback that adds keys to the epoch logs names them in :attr:`log_keys`, so EarlyStopping and the
    others accept them as ``monitor``.
    """

    run: RunView | None = None  # a class default too: subclasses that skip __init__ still have it
    #: Keys this callback adds to the epoch logs (see finetunekit.callbacks.monitor.fit_log_keys).
    log_keys: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.tuner: Any = None
        self.run = None
        self.params: dict[str, Any] = {}

    def set_tuner(self, tuner: Any) -> None:
        self.tuner = tuner

    def set_run(self, run: RunView | None) -> None:
        """The fit in progress (set by fit before any hook, reset to None when it ends)."""
        self.run = run

    def require_run(self) -> RunView:
        """``self.run``, or an error saying this callback only works inside ``fit``."""
        if self.run is None:
            raise RuntimeError(f"{type(self).__name__} needs a fit in progress; it has no run outside fit()")
        return self.run

    def set_params(self, params: Mapping[str, Any]) -> None:
        self.params = dict(params)

    @property
    def model(self) -> nn.Module:
        # AttributeError (not RuntimeError) so ``hasattr(cb, "model")`` stays a plain question.
        if self.tuner is None:
            raise AttributeError(
                f"{type(self).__name__}.model is not available yet: the callback gets its tuner when "
                "fit/evaluate/predict starts (or call set_tuner(tuner) yourself)."
            )
        model: nn.Module = self.tuner.model
        return model

    # -- state (for BackupAndRestore and checkpoints) -------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """JSON-friendly state to resume from; stateless callbacks have none."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; stateless callbacks accept anything."""

    # -- hooks -----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Logs | None = None) -> None:
        """Called once at the start of ``fit``."""

    def on_train_end(self, logs: Logs | None = None) -> None:
        """Called once at the end of ``fit``, also after an early stop."""

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        """Called at the start of each epoch; ``epoch`` is 0-based and counts from ``initial_epoch``."""

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        """Called after each epoch (and its validation) with train and ``val_`` metrics in ``logs``."""

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Keras 2 alias: called by the default :meth:`on_train_batch_begin`."""

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Keras 2 alias: called by the default :meth:`on_train_batch_end`."""

    def on_test_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of ``evaluate`` and of each validation pass inside ``fit``."""

    def on_test_end(self, logs: Logs | None = None) -> None:
        """Called at the end of ``evaluate`` / a validation pass, with its metrics."""

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before each evaluation batch."""

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after each evaluation batch."""

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        """Called at the start of ``predict``."""

    def on_predict_end(self, logs: Logs | None = None) -> None:
        """Called at the end of ``predict``."""

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        """Called before each prediction batch."""

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        """Called after each prediction batch."""


def pythonify_logs(logs: Mapping[str, Any] | None) -> Logs:
    """A new logs dict whose scalar tensors and numpy scalars are Python numbers.

    Decision 5 says logs hold floats; the loop already sends floats, this is the safety net. ``.item()``
    returns a plain number, so no autograd graph or device memory is kept alive by a callback storing
    logs (the classic "History leaks GPU memory" bug).
    """
    if not logs:
        return {}
    out: Logs = {}
    for key, value in logs.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value.detach().item())
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
