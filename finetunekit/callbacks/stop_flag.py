"""``stop_training``, the Keras flag a callback sets to stop a fit, honoured on the FineTuner and its module.

Keras callbacks write ``self.model.stop_training = True``; here ``self.model`` is the ``nn.Module``, not the
object that runs the loop. The FineTuner's ``stop_training`` is this descriptor, so the idiom works
unchanged instead of setting an attribute nobody reads.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class StopTrainingFlag:
    """``ft.stop_training``: also true when a callback set ``self.model.stop_training = True``.

    Keras callbacks stop a fit with ``self.model.stop_training = True``; here ``self.model`` is the
    ``nn.Module``, so the flag lives on both objects: setting it on the FineTuner writes it on its module
    too, and reading it on the FineTuner sees either. Whichever object a callback sets it on, the loop
    stops (after the current batch), never a silent no-op.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        model = obj.__dict__.get("model")
        return bool(obj.__dict__.get(self._slot, False) or getattr(model, "stop_training", False))

    def __set__(self, obj: Any, value: bool) -> None:
        obj.__dict__[self._slot] = bool(value)
        model = obj.__dict__.get("model")
        if isinstance(model, nn.Module):
            model.__dict__["stop_training"] = bool(value)  # a plain attribute, as a user's assignment makes
