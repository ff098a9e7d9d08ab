"""Keras' ``fit(steps_per_epoch=..., validation_freq=...)``: checked before any step, applied per epoch.

``steps_per_epoch`` trains each epoch on the first N batches of that epoch's (reshuffled) pass over the
data. Keras 3 instead continues one iterator across epochs; restarting the pass each epoch is what keeps
finetunekit's resume exact (an epoch's batches derive from its seed and index alone), and with
``shuffle=True`` each epoch still sees a different random subset. ``validation_freq`` is an int (validate
every N epochs: after epochs N, 2N, ...) or a collection of 1-based epoch numbers (Keras 2's list form).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from itertools import islice
from typing import Any

from finetunekit.errors import ConfigError

ValidationFreq = int | frozenset[int]


def check_steps_per_epoch(steps_per_epoch: Any, batches: int) -> int:
    """Batches per epoch: all of the loader's for None, else ``steps_per_epoch`` (at most that many)."""
    if steps_per_epoch is None:
        return batches
    if isinstance(steps_per_epoch, bool) or not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ConfigError(
            f"steps_per_epoch={steps_per_epoch!r} is invalid; expected None (the whole data set per epoch) "
            "or an integer >= 1"
        )
    if steps_per_epoch > batches:
        raise ConfigError(
            f"steps_per_epoch={steps_per_epoch} is more than the {batches} batches the training data holds "
            f"per pass; expected at most {batches}. Fix: steps_per_epoch=None (every batch once per epoch), "
            "or a smaller batch_size."
        )
    return steps_per_epoch


def check_validation_freq(validation_freq: Any) -> ValidationFreq:
    """An int >= 1, or a non-empty collection of 1-based epoch numbers, as a frozenset."""
    if isinstance(validation_freq, int) and not isinstance(validation_freq, bool) and validation_freq >= 1:
        return validation_freq
    if isinstance(validation_freq, Collection) and not isinstance(validation_freq, str) and validation_freq:
        epochs = list(validation_freq)
        if all(isinstance(e, int) and not isinstance(e, bool) and e >= 1 for e in epochs):
            return frozenset(epochs)
    raise ConfigError(
        f"validation_freq={validation_freq!r} is invalid; expected an integer >= 1 (validate every N "
        "epochs) or a list of 1-based epoch numbers, e.g. [1, 5, 10]"
    )


def validates(validation_freq: ValidationFreq, epoch: int) -> bool:
    """Whether the 0-based ``epoch`` ends with a validation pass."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


def take(batches: Iterable[Any], count: int) -> Iterable[Any]:
    """The first ``count`` batches (``count`` < the pass's length when steps_per_epoch is set)."""
    return islice(batches, count)
