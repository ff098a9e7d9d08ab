"""Protocols shared across layers, so a lower layer can talk to a higher one without importing it.

``callbacks/`` sits below ``training/``: a callback never imports the engine, it is handed a
:class:`RunView` of the fit in progress. Everything resumable in a fit is a :class:`Stateful`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Stateful(Protocol):
    """A part of a fit that a checkpoint saves and a resume puts back (torch's own convention).

    ``state_dict()`` returns a nested dict of tensors and JSON values (numbers, strings, lists, dicts,
    None); ``load_state_dict`` is its exact inverse.
    """

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


class RunView(Protocol):
    """What a callback may see and ask of the fit in progress (``callback.run`` during ``fit``).

    Positions are those of the batch being run: ``epoch`` (0-based), ``step`` (batch index in the epoch),
    ``steps_per_epoch`` and ``epochs``. The requests are the only ways to act on the run.
    """

    @property
    def epoch(self) -> int: ...

    @property
    def step(self) -> int: ...

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def epochs(self) -> int: ...

    @property
    def stop_requested(self) -> bool:
        """True once the run asked to stop on its own (e.g. ``compile(on_nonfinite="stop")``)."""
        ...

    @property
    def exact_resume_problem(self) -> str | None:
        """Why a mid-epoch checkpoint could not resume exactly (the loader), or None."""
        ...

    def request_stop(self) -> None:
        """Stop after the current batch (Keras' ``stop_training = True``)."""
        ...

    def set_nonfinite_policy(self, policy: str) -> None:
        """What a non-finite loss does from now on: "raise", "skip" or "stop"."""
        ...

    def capture_state(self, epoch: int, step: int) -> dict[str, bytes]:
        """The checkpoint files of the whole training state, for a resume before batch ``step`` of
        ``epoch`` (step 0: the start of that epoch)."""
        ...

    def model_files(self) -> dict[str, bytes]:
        """The files of ``ft.save()`` for the weights validation measures (the EMA when on)."""
        ...

    def measured_weights(self) -> dict[str, Any]:
        """The state dict validation measures (the EMA's when on), as ``ft.save`` writes it."""
        ...

    def gathered_state(self) -> AbstractContextManager[None]:
        """Enter on every rank before ``run_on_main`` writes ``capture_state``, ``model_files`` or
        ``measured_weights``: a sharded (FSDP) run gathers its full tensors here, once, because rank 0
        cannot gather alone. Does nothing in other runs."""
        ...

    def request_restore(self, folder: Any) -> None:
        """Before training starts: put the whole fit back into the state saved in ``folder``."""
        ...

    def run_on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` once per job (rank 0, the other ranks waiting), or plainly in one process."""
        ...
