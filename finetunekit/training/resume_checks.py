"""What a resume checks beyond the file format: that it continues *this* fit.

A backup stores two fingerprints: the ``compile()`` settings (optimizer, lr, schedule, loss, ...) and
the training data (:func:`finetunekit.data.fingerprint.data_fingerprint`). Restoring into a fit
compiled differently or training on other data would continue silently with state that does not
belong to it (the old LR schedule position, the old momentum), so it is refused with the difference
named, before any weight is replaced. Optimizer tensors must fit the model's parameters, and a
callback state its callback refuses is a :class:`CheckpointError` naming the callback.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any

from finetunekit.data.fingerprint import data_fingerprint
from finetunekit.errors import CheckpointError
from finetunekit.saving import validate_training

_data_cache: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()
_START_FRESH = (
    "Compile and call fit as the run that wrote it did, or start fresh: point BackupAndRestore at "
    "another backup_dir (or remove this backup)."
)


def describe(value: Any) -> Any:
    """A JSON description of a compile argument that is equal across runs (no memory addresses)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [describe(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): describe(v) for k, v in value.items()}
    if callable(value) and hasattr(value, "__qualname__"):  # a function or class
        return f"{getattr(value, '__module__', '?')}.{value.__qualname__}"
    text = repr(value)
    return text if " at 0x" not in text else f"{type(value).__module__}.{type(value).__qualname__}"


def compile_fingerprint(trainer: Any) -> dict[str, Any] | None:
    given = getattr(trainer, "compile_kwargs", None)
    return None if given is None else {str(k): describe(v) for k, v in given.items()}


def data_of(loader: Any) -> dict[str, Any] | None:
    dataset = getattr(loader, "dataset", None)
    if dataset is None:
        return None
    try:
        return _data_cache[loader]
    except (KeyError, TypeError):
        pass
    fp = data_fingerprint(dataset)
    with suppress(TypeError):  # a loader that cannot be weakly referenced: computed each time
        _data_cache[loader] = fp
    return fp


def fingerprints(trainer: Any) -> dict[str, Any]:
    """What :func:`check_fingerprints` compares on resume."""
    return {"compile": compile_fingerprint(trainer), "data": data_of(trainer.loader)}


def _changed(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    return [
        f"{k}={then.get(k)!r} -> {now.get(k)!r}" for k in sorted({*then, *now}) if then.get(k) != now.get(k)
    ]


def check_fingerprints(trainer: Any, saved: Mapping[str, Any] | None, folder: Path) -> None:
    """Refuse a backup of a fit compiled differently or trained on other data (older backups
    without fingerprints are not compared)."""
    if not saved:
        return
    then_compile, now_compile = saved.get("compile"), compile_fingerprint(trainer)
    if isinstance(then_compile, dict) and now_compile is not None:
        changes = _changed(then_compile, now_compile)
        if changes:
            raise CheckpointError(
                f"backup {str(folder)!r} was written by a fit compiled differently: "
                f"{'; '.join(changes[:4])}. "
                f"Resuming would continue with the old optimizer and schedule state. {_START_FRESH}"
            )
    then_data, now_data = saved.get("data"), data_of(trainer.loader)
    if isinstance(then_data, dict) and now_data is not None and then_data != now_data:
        raise CheckpointError(
            f"backup {str(folder)!r} was written while training on other data ({then_data.get('samples')} "
            f"samples, digest {str(then_data.get('digest'))[:12]}); this fit trains on {now_data['samples']} "
            f"samples, digest {now_data['digest'][:12]}. Expected the same training data (a validation_split "
            f"without FineTuner(seed=...) draws another split each run). {_START_FRESH}"
        )


def check_restorable(trainer: Any, meta: dict[str, Any], parts: dict[str, Any], folder: Path) -> None:
    """Everything a restore can check before it changes the model, optimizer or callbacks: the decoded
    parts' RNG and optimizer tensors, the fingerprints, and each callback's state (loaded into a copy)."""
    source = repr(str(folder / "training.safetensors"))
    validate_training.decoded_parts(parts, dict(trainer.model.named_parameters()), source)
    check_fingerprints(trainer, meta.get("fingerprints"), folder)


def load_callback_state(callback: Any, state: Mapping[str, Any], name: str, index: int) -> None:
    """``callback.load_state_dict(state)``; a state it cannot take is a CheckpointError naming it."""
    try:
        callback.load_state_dict(state)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
        raise CheckpointError(
            f"the checkpoint's state for callback {name} (number {index + 1} of that class) is malformed "
            f"({type(e).__name__}: {str(e)[:120]}); expected what {name}.state_dict() writes. The "
            f"checkpoint was altered or written by another version. {_START_FRESH}"
        ) from e
