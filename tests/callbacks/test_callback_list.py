"""CallbackList: order, every hook reaches every callback, float logs, defaults, propagation."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from callback_harness import FakeTuner

from finetunekit.callbacks import Callback, CallbackList, History, ProgbarLogger
from finetunekit.callbacks.base import HOOK_NAMES

INDEXED = {"on_epoch_begin", "on_epoch_end"} | {h for h in HOOK_NAMES if "batch" in h}


class Recorder(Callback):
    """Records (name, hook, args) for every hook, including the Keras 2 batch aliases."""

    def __init__(self, name: str, journal: list[tuple[str, str, tuple[Any, ...]]]) -> None:
        super().__init__()
        self.name = name
        self.journal = journal
        for hook in HOOK_NAMES:
            if hook in ("on_batch_begin", "on_batch_end"):
                continue  # keep the base delegation from on_train_batch_*; recorded separately below
            setattr(self, hook, self._make(hook))

    def _make(self, hook: str) -> Any:
        def record(*args: Any) -> None:
            self.journal.append((self.name, hook, args))

        return record


def test_every_hook_reaches_every_callback_in_order() -> None:
    journal: list[tuple[str, str, tuple[Any, ...]]] = []
    cbl = CallbackList([Recorder("a", journal), Recorder("b", journal)])
    hooks = [h for h in HOOK_NAMES if h not in ("on_batch_begin", "on_batch_end")]
    for hook in hooks:
        if hook in INDEXED:
            getattr(cbl, hook)(7, {"loss": 1.0})
        else:
            getattr(cbl, hook)({"loss": 1.0})
    expected = []
    for hook in hooks:
        args = (7, {"loss": 1.0}) if hook in INDEXED else ({"loss": 1.0},)
        expected += [("a", hook, args), ("b", hook, args)]
    assert journal == expected


def test_keras2_batch_aliases_fire_from_train_batch_hooks() -> None:
    seen: list[tuple[str, int]] = []

    class Old(Callback):
        def on_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            seen.append(("begin", batch))

        def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            seen.append(("end", batch))

    cbl = CallbackList([Old()])
    cbl.on_train_batch_begin(0)
    cbl.on_train_batch_end(0, {"loss": 0.1})
    assert seen == [("begin", 0), ("end", 0)]


def test_tensor_and_numpy_logs_become_python_floats_without_graph() -> None:
    received: list[dict[str, Any]] = []

    class Grab(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            received.append(logs or {})

    w = torch.ones(3, requires_grad=True)
    loss = (w * 2).sum()  # 0-d, requires grad, has a graph
    logs = {"loss": loss, "accuracy": np.float32(0.75), "val_loss": torch.tensor(0.5), "lr": 1e-3}
    CallbackList([Grab()]).on_epoch_end(0, logs)
    got = received[0]
    assert got == {"loss": 6.0, "accuracy": 0.75, "val_loss": 0.5, "lr": 1e-3}
    assert all(type(v) is float for v in got.values())
    assert isinstance(logs["loss"], torch.Tensor)  # the caller's dict is not modified


def test_all_callbacks_share_one_logs_dict_so_additions_flow_on() -> None:
    class AddLR(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            logs["lr"] = 0.01

    cbl = CallbackList([AddLR()], add_history=True)
    cbl.on_train_begin()
    cbl.on_epoch_end(0, {"loss": 1.0})
    assert cbl.history.history == {"loss": [1.0], "lr": [0.01]}


def test_none_logs_become_empty_dict() -> None:
    got: list[Any] = []
    cbl = CallbackList([Callback()])
    cbl.callbacks[0].on_train_begin = lambda logs=None: got.append(logs)  # type: ignore[method-assign]
    cbl.on_train_begin()
    assert got == [{}]


def test_add_history_appends_one_history_last_unless_given() -> None:
    user = Callback()
    cbl = CallbackList([user], add_history=True)
    assert isinstance(cbl.history, History)
    assert cbl.callbacks == [user, cbl.history]
    mine = History()
    cbl2 = CallbackList([mine], add_history=True)
    assert cbl2.history is mine and len(cbl2) == 1
    assert CallbackList([user]).history is None


@pytest.mark.parametrize(("verbose", "expected"), [(0, 0), (1, 1), (2, 1)])
def test_add_progbar_only_when_verbose(verbose: int, expected: int) -> None:
    cbl = CallbackList([], add_progbar=True, verbose=verbose)
    assert sum(isinstance(cb, ProgbarLogger) for cb in cbl) == expected


def test_tuner_and_params_propagate() -> None:
    tuner = FakeTuner()
    a, b = Callback(), Callback()
    cbl = CallbackList([a], tuner=tuner, verbose=2, epochs=5, steps=10)
    cbl.append(b)
    for cb in (a, b):
        assert cb.tuner is tuner
        assert cb.model is tuner.model
        assert cb.params == {"epochs": 5, "steps": 10, "verbose": 2}
    other = FakeTuner()
    cbl.set_tuner(other)
    assert a.model is other.model and b.model is other.model


def test_model_before_set_tuner_is_a_clear_attribute_error() -> None:
    cb = Callback()
    assert not hasattr(cb, "model")
    with pytest.raises(AttributeError, match="set_tuner"):
        _ = cb.model


def test_base_state_dict_is_empty_and_load_accepts_it() -> None:
    cb = Callback()
    assert cb.state_dict() == {}
    cb.load_state_dict({})
