"""LambdaCallback: a callback from plain functions, for one-off hooks without a subclass."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from finetunekit.callbacks.base import HOOK_NAMES, Callback
from finetunekit.errors import ConfigError


class LambdaCallback(Callback):
    """Calls the given functions from the matching hooks, with the hook's own arguments (Keras API).

    ``on_epoch_begin`` / ``on_epoch_end`` take ``(epoch, logs)``, the batch hooks ``(batch, logs)``,
    ``on_train_begin`` / ``on_train_end`` and the other begin/end hooks ``(logs)``. Further hooks
    (``on_test_begin=...``, ``on_predict_batch_end=...``) go in ``**kwargs``. Keras silently accepts
    any keyword; here an unknown one raises :class:`~finetunekit.errors.ConfigError`, so a typo such as
    ``on_epoch_ned`` does not turn into a callback that never runs.
    """

    def __init__(
        self,
        on_epoch_begin: Callable[..., Any] | None = None,
        on_epoch_end: Callable[..., Any] | None = None,
        on_train_begin: Callable[..., Any] | None = None,
        on_train_end: Callable[..., Any] | None = None,
        on_train_batch_begin: Callable[..., Any] | None = None,
        on_train_batch_end: Callable[..., Any] | None = None,
        **kwargs: Callable[..., Any] | None,
    ) -> None:
        super().__init__()
        unknown = sorted(set(kwargs) - set(HOOK_NAMES))
        if unknown:
            raise ConfigError(
                f"LambdaCallback got unknown hook name(s) {unknown}; expected keywords among "
                f"{list(HOOK_NAMES)}. Check the spelling of the hook."
            )
        hooks: dict[str, Callable[..., Any] | None] = {
            "on_epoch_begin": on_epoch_begin,
            "on_epoch_end": on_epoch_end,
            "on_train_begin": on_train_begin,
            "on_train_end": on_train_end,
            "on_train_batch_begin": on_train_batch_begin,
            "on_train_batch_end": on_train_batch_end,
            **kwargs,
        }
        for name, fn in hooks.items():
            if fn is None:
                continue
            if not callable(fn):
                raise ConfigError(
                    f"LambdaCallback({name}=...) must be a function, got {type(fn).__name__} {fn!r}. "
                    f"Pass e.g. {name}=lambda *args: ..."
                )
            # An instance attribute shadows the no-op method, exactly as Keras does it.
            setattr(self, name, fn)
