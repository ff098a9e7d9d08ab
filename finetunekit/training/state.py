"""The registry of a fit's resumable state: every stateful part is registered once, by name.

A checkpoint is ``TrainingState.state_dict()``: one entry per registered part, each the part's own
``state_dict()``. Restoring calls every part's ``load_state_dict`` in registration order (the RNGs are
registered last, so nothing draws after them). A part cannot be forgotten by the checkpoint code, because
there is no checkpoint code per part: adding an option that keeps state means registering it here.

:func:`encode` splits such a nested state into safetensors tensors and JSON (no pickle): each tensor leaf
becomes ``{"__tensor__": key}`` in the JSON and ``key`` in the tensor file.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch

from finetunekit._types import Stateful
from finetunekit.errors import CheckpointError

_TENSOR = "__tensor__"


class TrainingState:
    """Named :class:`~finetunekit._types.Stateful` parts, saved and restored together."""

    def __init__(self) -> None:
        self._parts: dict[str, Stateful] = {}

    def register(self, name: str, part: Stateful) -> None:
        if name in self._parts:
            raise ValueError(f"training state part {name!r} is registered twice")
        if not isinstance(part, Stateful):
            raise TypeError(f"training state part {name!r} ({type(part).__name__}) has no state_dict()")
        self._parts[name] = part

    def __contains__(self, name: object) -> bool:
        return name in self._parts

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __getitem__(self, name: str) -> Stateful:
        return self._parts[name]

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self._parts.items()}

    @contextmanager
    def gathered(self) -> Iterator[None]:
        """While inside, the parts whose state lives on every rank (an FSDP run's shards, each DDP rank's
        RNG) hold it, gathered once with every rank taking part, so that rank 0 alone can then write a
        checkpoint without a collective. Entered on every rank; in one process it gathers nothing."""
        collecting = [p for p in self._parts.values() if hasattr(p, "gather")]
        for part in collecting:
            part.gather()
        try:
            yield
        finally:
            for part in collecting:
                part.release()  # type: ignore[attr-defined]

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Every registered part from ``state``; a part the checkpoint lacks is an error naming it (a
        checkpoint of a run without, say, EMA cannot resume one with it exactly)."""
        missing = [name for name in self._parts if name not in state]
        if missing:
            raise CheckpointError(
                f"the checkpoint has no state for {missing} (it holds {sorted(state)}); expected a "
                "checkpoint written by a fit compiled with the same options. Resume with those, or use "
                "another backup_dir."
            )
        for name, part in self._parts.items():
            part.load_state_dict(state[name])


def encode(state: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """(JSON-friendly structure, tensors by key) for a nested state of dicts, lists and tensors."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, key: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {_TENSOR: key}
        if isinstance(value, Mapping):
            return {str(k): walk(v, f"{key}.{k}" if key else str(k)) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(value)]
        return value

    return walk(state, prefix), tensors


def decode(structure: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(structure, dict):
        if set(structure) == {_TENSOR}:
            key = structure[_TENSOR]
            if key not in tensors:
                raise CheckpointError(f"the checkpoint's tensor file lacks {key!r}; it is incomplete")
            return tensors[key]
        return {k: decode(v, tensors) for k, v in structure.items()}
    if isinstance(structure, list):
        return [decode(v, tensors) for v in structure]
    return structure
