"""CallbackList: runs every hook of a fit's callbacks in order, adding History and the progress bar.

Its own module (not ``base``), because it builds the default History and ProgbarLogger, which are
callbacks themselves: ``base`` stays free of imports from its subclasses.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from finetunekit._types import RunView
from finetunekit.callbacks.base import Callback, Logs, pythonify_logs
from finetunekit.callbacks.history import History
from finetunekit.callbacks.progbar import ProgbarLogger


class CallbackList(Callback):
    """Dispatches every hook to its callbacks, in order, with Python-float logs.

    All callbacks of one call receive the *same* logs dict, so a callback that adds a key (as
    ReduceLROnPlateau adds ``lr``) is seen by those after it; that is why :class:`History` goes last.
    """

    def __init__(
        self,
        callbacks: Iterable[Callback] | None = None,
        tuner: Any = None,
        add_history: bool = False,
        add_progbar: bool = False,
        verbose: int = 1,
        epochs: int | None = None,
        steps: int | None = None,
        **params: Any,
    ) -> None:
        super().__init__()
        self.callbacks: list[Callback] = list(callbacks) if callbacks else []
        self._history: Any = None
        self._progbar: Any = None
        self._add_default_callbacks(add_history, add_progbar and verbose != 0)
        if tuner is not None:
            self.set_tuner(tuner)
        self.set_params({"epochs": epochs, "steps": steps, "verbose": verbose, **params})

    def _add_default_callbacks(self, add_history: bool, add_progbar: bool) -> None:
        for cb in self.callbacks:
            if isinstance(cb, History):
                self._history = cb
            elif isinstance(cb, ProgbarLogger):
                self._progbar = cb
        if self._history is None and add_history:
            self._history = History()
            self.callbacks.append(self._history)
        if self._progbar is None and add_progbar:
            self._progbar = ProgbarLogger()
            self.callbacks.append(self._progbar)
        # Checkpointing callbacks (``runs_last = True``) go after all others, History included, so the
        # state they save already holds every other callback's update for that batch or epoch.
        self.callbacks.sort(key=lambda cb: bool(getattr(cb, "runs_last", False)))

    @property
    def history(self) -> Any:
        """The :class:`History` in this list (added by ``add_history=True``), or None."""
        return self._history

    def append(self, callback: Callback) -> None:
        callback.set_tuner(self.tuner)
        callback.set_run(self.run)
        callback.set_params(self.params)
        self.callbacks.append(callback)

    def __iter__(self) -> Iterator[Callback]:
        return iter(self.callbacks)

    def __len__(self) -> int:
        return len(self.callbacks)

    def set_tuner(self, tuner: Any) -> None:
        super().set_tuner(tuner)
        for cb in self.callbacks:
            cb.set_tuner(tuner)

    def set_params(self, params: Mapping[str, Any]) -> None:
        super().set_params(params)
        for cb in self.callbacks:
            cb.set_params(params)

    def set_run(self, run: RunView | None) -> None:
        super().set_run(run)
        for cb in self.callbacks:
            cb.set_run(run)

    # -- dispatch --------------------------------------------------------------------------------------
    def _call(self, hook: str, logs: Mapping[str, Any] | None) -> None:
        clean = pythonify_logs(logs)
        for cb in self.callbacks:
            getattr(cb, hook)(clean)

    def _call_indexed(self, hook: str, index: int, logs: Mapping[str, Any] | None) -> None:
        clean = pythonify_logs(logs)
        for cb in self.callbacks:
            getattr(cb, hook)(index, clean)

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._call("on_train_begin", logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        self._call("on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_train_batch_end", batch, logs)

    def on_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self.on_train_batch_begin(batch, logs)

    def on_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self.on_train_batch_end(batch, logs)

    def on_test_begin(self, logs: Logs | None = None) -> None:
        self._call("on_test_begin", logs)

    def on_test_end(self, logs: Logs | None = None) -> None:
        self._call("on_test_end", logs)

    def on_test_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_test_batch_begin", batch, logs)

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_test_batch_end", batch, logs)

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        self._call("on_predict_begin", logs)

    def on_predict_end(self, logs: Logs | None = None) -> None:
        self._call("on_predict_end", logs)

    def on_predict_batch_begin(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_predict_batch_begin", batch, logs)

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._call_indexed("on_predict_batch_end", batch, logs)
