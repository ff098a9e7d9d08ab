"""History: the per-epoch record ``fit`` returns, as in Keras."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from finetunekit.callbacks.base import Callback, Logs


class History(Callback):
    """Records the epoch logs of one ``fit``: ``history.history["val_accuracy"][i]`` is epoch ``epoch[i]``.

    ``fit`` creates a new History each call and returns it, as Keras does, so ``epoch`` holds the real
    epoch indices (starting at ``initial_epoch`` on a resumed run). Unlike Keras, which resets ``epoch``
    but keeps appending to ``history`` when one History object is passed to several fits, both reset at
    ``on_train_begin``: the lists stay aligned with ``epoch``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[str, list[Any]] = {}
        self.epoch: list[int] = []
        self._state_loaded = False

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self._state_loaded:  # resumed by BackupAndRestore: keep the epochs before the interruption
            self._state_loaded = False
            return
        self.history = {}
        self.epoch = []

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history = {k: list(v) for k, v in dict(state.get("history", {})).items()}
        self.epoch = [int(e) for e in state.get("epoch", [])]
        self._state_loaded = True

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self.epoch.append(epoch)
        for key, value in (logs or {}).items():
            self.history.setdefault(key, []).append(value)

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"
