"""One rank failing must end the job promptly, with that rank's error named as the cause.

When a rank raises, its peers are usually blocked in a collective (the gradient all-reduce of the same
step). :func:`guard` wraps fit / evaluate / predict: on the failing rank it prints which rank failed and
why, records the exception where torchrun looks for a root cause (TORCHELASTIC_ERROR_FILE), and tears
our process group down so the peers' collectives fail now rather than at the timeout; torchrun then
stops the remaining workers. On a peer, the resulting collective error is re-raised as a
:class:`DistributedError` that says another rank failed first, so nobody chases the echo.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar, cast

import torch.distributed as dist

from finetunekit.distributed import env
from finetunekit.errors import DistributedError

F = TypeVar("F", bound=Callable[..., Any])

# What gloo / NCCL / the store say when the other end of a collective went away.
_PEER_GONE = ("connection closed", "connection reset", "broken pipe", "nccl", "gloo")


def guard(method: F) -> F:
    """Decorator for the tuner's entry points; free in a single process (one ``try``)."""

    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except Exception as e:
            if env.is_initialized() and env.world_size() > 1 and not getattr(e, "_finetunekit_seen", False):
                _release_ddp(args[0] if args else None)
                _handle(e)
            raise

    return cast(F, wrapper)


def _release_ddp(tuner: Any) -> None:
    """Free the DDP wrapper before the process group goes: a reducer outliving its group can abort the
    interpreter at exit ("terminate called without an active exception")."""
    run = getattr(tuner, "_distributed_run", None)
    if run is not None:
        run.release()


def is_peer_failure(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing (most likely because another rank is gone)."""
    if isinstance(e, DistributedError):
        return False
    if isinstance(e, dist.DistError):
        return True
    return isinstance(e, RuntimeError) and any(s in str(e).lower() for s in _PEER_GONE)


def _handle(e: Exception) -> None:
    rank, world = env.rank(), env.world_size()
    e._finetunekit_seen = True  # type: ignore[attr-defined]  # nested guarded calls report once
    if is_peer_failure(e):
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        err = DistributedError(
            f"rank {rank} of {world} stopped because a collective operation failed ({first}); another "
            "rank most likely failed first: its error, printed above and named as the root cause in "
            "torchrun's summary, is what to fix"
        )
        err._finetunekit_seen = True  # type: ignore[attr-defined]
        env.abort()
        raise err from e
    print(
        f"finetunekit: rank {rank} of {world} failed with {type(e).__name__}: {e}; stopping the job "
        "(the other ranks will report a failed collective)",
        file=sys.stderr,
        flush=True,
    )
    _record_for_torchrun(e)
    env.abort()


def _record_for_torchrun(e: BaseException) -> None:
    """torchrun names the earliest failure with an error file as the root cause of the job."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(e)
    except Exception:  # reporting must never mask the real error
        pass
