"""LambdaCallback calls the given functions with the hook's own arguments."""

from __future__ import annotations

from typing import Any

import pytest
from callback_harness import simulate_fit

from finetunekit.callbacks import CallbackList, LambdaCallback
from finetunekit.errors import ConfigError


def test_functions_get_the_right_arguments() -> None:
    calls: list[tuple[Any, ...]] = []
    cb = LambdaCallback(
        on_train_begin=lambda logs: calls.append(("train_begin", logs)),
        on_epoch_begin=lambda epoch, logs: calls.append(("epoch_begin", epoch, logs)),
        on_train_batch_begin=lambda batch, logs: calls.append(("batch_begin", batch, logs)),
        on_train_batch_end=lambda batch, logs: calls.append(("batch_end", batch, logs)),
        on_epoch_end=lambda epoch, logs: calls.append(("epoch_end", epoch, logs)),
        on_train_end=lambda logs: calls.append(("train_end", logs)),
    )
    simulate_fit([cb], [{"loss": 0.5, "val_loss": 0.6}], steps=2)
    assert calls == [
        ("train_begin", {}),
        ("epoch_begin", 0, {}),
        ("batch_begin", 0, {}),
        ("batch_end", 0, {"loss": 0.5}),
        ("batch_begin", 1, {}),
        ("batch_end", 1, {"loss": 0.5}),
        ("epoch_end", 0, {"loss": 0.5, "val_loss": 0.6}),
        ("train_end", {}),
    ]


def test_kwargs_hooks_and_unset_hooks_are_noops() -> None:
    seen: list[Any] = []
    cb = LambdaCallback(on_test_end=lambda logs: seen.append(logs))
    cbl = CallbackList([cb])
    cbl.on_epoch_end(0, {"loss": 1.0})  # not given: no-op
    cbl.on_test_end({"loss": 0.2})
    assert seen == [{"loss": 0.2}]


def test_unknown_hook_name_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="on_epoch_ned"):
        LambdaCallback(on_epoch_ned=lambda epoch, logs: None)


def test_non_callable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="on_epoch_end"):
        LambdaCallback(on_epoch_end="print")  # type: ignore[arg-type]
