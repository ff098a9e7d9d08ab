"""Which keys a fit's epoch logs will hold, and the check that a callback's ``monitor`` is one of them.

Keras warns at every epoch when EarlyStopping, ReduceLROnPlateau or ModelCheckpoint monitor a key the
logs never have (``"val_acc"`` for ``"val_accuracy"``, ``"val_loss"`` without validation data), and the
callback silently never acts. Here ``fit`` computes the keys up front with :func:`fit_log_keys` and hands
them to every callback as ``params["log_keys"]``; a monitor outside them raises at ``on_train_begin``,
before the first step, naming the keys there will be.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from finetunekit.callbacks.base import Callback
from finetunekit.errors import ConfigError


def fit_log_keys(metric_names: Sequence[str], validation: bool, callbacks: Iterable[Any] = ()) -> list[str]:
    """The keys of ``fit``'s epoch logs, in the order they appear.

    ``loss`` and each compiled metric, ``lr`` (the loop's), with validation data ``val_`` of each and the
    train/validation gaps (``gap_loss``, ``gap_<metric>``, see ``finetunekit.techniques.gap``), then the
    keys callbacks add themselves (their ``log_keys`` attribute, e.g. RetentionMonitor's).
    ``validation`` is whether ``fit`` has validation data at all: with ``validation_freq`` the ``val_``
    keys are missing on the epochs that do not validate, and monitors skip those epochs.
    """
    train = ["loss", *metric_names]
    keys = [*train, "lr"]
    if validation:
        keys += [f"val_{k}" for k in train] + [f"gap_{k}" for k in train]
    for cb in callbacks:
        keys += [k for k in getattr(cb, "log_keys", ()) if k not in keys]
    return keys


def may_add_keys(callback: Any) -> bool:
    """Whether a callback may add epoch-log keys it did not declare: the user's own ``on_epoch_end``
    (a subclass outside finetunekit, or a LambdaCallback given one) without ``log_keys``."""
    if getattr(callback, "log_keys", ()):
        return False
    if "on_epoch_end" in vars(callback):  # LambdaCallback(on_epoch_end=...) or a patched instance
        return True
    own = type(callback).on_epoch_end is not Callback.on_epoch_end
    return own and not type(callback).__module__.startswith("finetunekit.")


def monitor_params(metric_names: Sequence[str], validation: bool, callbacks: Iterable[Any]) -> dict[str, Any]:
    """What ``fit`` adds to the callbacks' ``params``: ``log_keys`` (:func:`fit_log_keys`) and
    ``log_keys_open``, True when a callback may add keys of its own, so that an unknown ``monitor`` is
    judged on the first epoch's logs instead of at ``on_train_begin``."""
    callbacks = list(callbacks)
    return {
        "log_keys": fit_log_keys(metric_names, validation, callbacks),
        "log_keys_open": any(may_add_keys(cb) for cb in callbacks),
    }


def _unknown_monitor(owner: str, monitor: str, keys: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(monitor, list(keys), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    has_val = any(k.startswith("val_") for k in keys)
    val = "" if has_val else "; val_ keys need fit(validation_data=...) or fit(validation_split=...)"
    return ConfigError(
        f"{owner}(monitor={monitor!r}): {where} no {monitor!r} key; expected one of {list(keys)}.{hint} "
        f"Fix: pass monitor= one of those keys{val}. A custom callback that adds keys to the logs names "
        "them in its log_keys attribute (and runs before the callback that monitors them)."
    )


def check_monitor(owner: str, monitor: str, params: Mapping[str, Any]) -> None:
    """At ``on_train_begin``: raise ConfigError when ``monitor`` is not among ``params["log_keys"]``.

    Without ``log_keys`` (a callback driven by one's own loop) there is nothing to check against; with
    ``log_keys_open`` the check waits for the first epoch's logs (:func:`monitored_value`).
    """
    keys = params.get("log_keys")
    if keys is None or monitor in keys or params.get("log_keys_open"):
        return
    raise _unknown_monitor(owner, monitor, keys, "this fit's logs will have")


def monitored_value(owner: str, monitor: str, logs: Mapping[str, Any], params: Mapping[str, Any]) -> Any:
    """``logs[monitor]``, or None on an epoch that legitimately lacks it (no validation this epoch).

    When callbacks may add keys (``log_keys_open``), a monitor still missing from a complete epoch's
    logs (one that validated, or any epoch for a non-``val_`` key) raises ConfigError: it would never
    be seen. Batch logs (no ``lr`` key) are never judged.
    """
    value = logs.get(monitor)
    if value is not None or not params.get("log_keys_open") or monitor in params.get("log_keys", ()):
        return value
    if "lr" not in logs:  # batch logs (ModelCheckpoint(save_freq=N)): fit's epoch logs always have lr
        return None
    validated = any(k.startswith("val_") for k in logs)
    if validated or not monitor.startswith("val_"):
        raise _unknown_monitor(owner, monitor, list(logs), "the epoch logs have")
    return None
