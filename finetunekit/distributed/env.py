"""Process-group lifecycle and rank queries, safe to call in a plain single process.

Every helper here answers as one process would (rank 0 of 1, barriers are no-ops) when
``torch.distributed`` is unavailable or not initialized, so callbacks that write files can call them
unconditionally. finetunekit initializes the default process group only when it is not initialized
yet, remembers that it did, and destroys only a group it created: a group the user set up is theirs.
"""

from __future__ import annotations

import atexit
import contextlib
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from finetunekit.errors import ConfigError

#: torchrun (torch.distributed.run) sets these for every worker it starts.
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: FINETUNEKIT_DIST_TIMEOUT (seconds) or init(timeout_s=) bound how long a collective waits for a rank
#: that is alive but stuck; unset, torch's defaults apply (10 minutes for NCCL, 30 for gloo). A crashed
#: rank does not need it: torchrun or the closed connection ends the job at once.
TIMEOUT_VAR = "FINETUNEKIT_DIST_TIMEOUT"

_owned = False  # whether finetunekit created the default process group (and so may destroy it)
_control_group: Any = None  # a gloo group for small CPU-side messages when the default group is NCCL
_atexit_registered = False


def is_initialized() -> bool:
    """True when a default process group exists (ours or the user's)."""
    return dist.is_available() and dist.is_initialized()


def launched_by_torchrun() -> bool:
    """True inside a worker started by ``torchrun`` (or anything setting the same variables)."""
    return all(name in os.environ for name in TORCHRUN_VARS)


def world_size() -> int:
    """Number of processes in the job; 1 without a process group."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's global rank; 0 without a process group."""
    return dist.get_rank() if is_initialized() else 0


def local_rank() -> int:
    """This process's index on its machine (torchrun's LOCAL_RANK): which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """True on rank 0, and in a plain single process: the one process that prints and writes files."""
    return rank() == 0


def owns_process_group() -> bool:
    """Whether the default process group was created by finetunekit (then we destroy it at exit)."""
    return _owned and is_initialized()


def wants_distributed(flag: bool | None) -> bool:
    """Resolve FineTuner(distributed=...): None follows the environment (torchrun or an initialized
    process group), False never distributes, True insists and explains how to launch when it cannot."""
    if flag is not None and not isinstance(flag, bool):
        raise ConfigError(f"distributed={flag!r} is invalid; expected None (auto), True or False")
    if flag is False:
        return False
    if is_initialized() or launched_by_torchrun():
        return dist.is_available()
    if flag:
        raise ConfigError(
            "distributed=True, but this process was not started by torchrun and no process group is "
            "initialized; launch the script with `torchrun --nproc_per_node=N script.py` (see "
            "docs/distributed.md), or call torch.distributed.init_process_group() before fit"
        )
    return False


def _timeout(timeout_s: float | None) -> timedelta | None:
    value = timeout_s if timeout_s is not None else os.environ.get(TIMEOUT_VAR)
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError as e:
        raise ConfigError(f"{TIMEOUT_VAR}={value!r} is not a number; expected seconds, e.g. 600") from e
    if not seconds > 0:
        raise ConfigError(f"the distributed timeout {seconds!r} is invalid; expected seconds > 0, e.g. 600")
    return timedelta(seconds=seconds)


def init(device: torch.device | None = None, timeout_s: float | None = None) -> bool:
    """Initialize the default process group from torchrun's environment unless one exists.

    NCCL for CUDA devices, gloo otherwise. Returns True when this call created the group. Call it
    yourself before ``fit`` to choose the timeout; ``fit`` calls it with the defaults.
    """
    global _owned, _atexit_registered
    if is_initialized():
        return False
    if not launched_by_torchrun():
        missing = [v for v in TORCHRUN_VARS if v not in os.environ]
        raise ConfigError(
            f"cannot start distributed training: the environment lacks {missing}; launch with `torchrun "
            "--nproc_per_node=N script.py` or initialize torch.distributed yourself"
        )
    cuda = device is not None and device.type == "cuda"
    if cuda and device is not None and device.index is not None:
        torch.cuda.set_device(device)  # NCCL collectives use the current device
    backend, timeout = "nccl" if cuda else "gloo", _timeout(timeout_s)
    store = _restart_safe_store(timeout)
    if store is None:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        rank_, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(backend=backend, store=store, rank=rank_, world_size=world, timeout=timeout)
    _owned = True
    if not _atexit_registered:
        atexit.register(shutdown)
        _atexit_registered = True
    return True


def _restart_safe_store(timeout: timedelta | None) -> Any:
    """The agent's store, with keys private to this restart of a single-node torchrun job.

    torchrun keeps one store across ``--max-restarts`` restarts, and the process group's rendezvous keys
    (each rank's address) are not per attempt: a restarted rank that reads a peer's key before that peer
    rewrote it connects to the dead process of the previous attempt and fails (pytorch issues #135712,
    #167288). Within one node every worker restarts together, so TORCHELASTIC_RESTART_COUNT names the
    attempt consistently; across nodes it does not, and docs/distributed.md gives torch's own remedy.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or os.environ.get("GROUP_WORLD_SIZE") != "1":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
        is_master=False, timeout=timeout or timedelta(minutes=30),
    )  # fmt: skip
    return dist.PrefixStore(f"finetunekit/attempt_{attempt}", store)


def shutdown(wait_for_peers: bool = True) -> None:
    """Destroy the process group if finetunekit created it (registered at exit); else do nothing.

    At a normal exit every rank first meets the others in a barrier: a rank that tears its gloo
    connections down while a peer still uses them (the peer writing its save, say) makes that peer's
    process abort at exit ("terminate called without an active exception"). ``abort`` skips the wait.
    """
    global _owned, _control_group
    if _owned and is_initialized():
        # gloo connections only: the default group under gloo, the control group when one was made (a new
        # one here would be a collective that a peer gone early could leave waiting)
        gloo = dist.get_backend() == "gloo" or _control_group is not None
        if wait_for_peers and gloo and dist.get_world_size() > 1:
            with contextlib.suppress(Exception):  # a peer that failed must not keep this one waiting
                dist.monitored_barrier(control_group(), timeout=timedelta(seconds=60))
        _control_group = None
        dist.destroy_process_group()
    _owned = False


def abort() -> None:
    """Tear our process group down at once after a failure on this rank, so peers blocked in a
    collective get an error now instead of at the timeout. A user's group is left to the user."""
    with contextlib.suppress(Exception):  # a broken group may refuse a clean destroy; we are failing
        shutdown(wait_for_peers=False)


def control_group() -> Any:
    """The group for small CPU-side messages (stop flags, objects, barriers): the default group under
    gloo, else a gloo group created on first use (collectively: every rank reaches it together), so
    control traffic needs no GPU synchronisation."""
    global _control_group
    if dist.get_backend() == "gloo":
        return None
    if _control_group is None:
        _control_group = dist.new_group(backend="gloo")
    return _control_group


def barrier() -> None:
    """Wait until every rank arrives; a no-op in a single process. Call it on every rank, never inside
    ``if is_main_process():`` (the other ranks would wait forever)."""
    if is_initialized() and world_size() > 1:
        dist.barrier(group=control_group())
