"""Multi-process training with torch.distributed (DDP under torchrun). See docs/distributed.md.

The helpers below answer as a single process does (rank 0 of 1, barriers and broadcasts are no-ops)
when no process group is initialized, so code that writes files can use them unconditionally::

    from finetunekit.distributed import is_main_process, run_on_main

    run_on_main(lambda: write_checkpoint(path))   # on every rank: rank 0 writes, all wait, errors spread

The machinery fit uses (DDP wrapping, sharded loaders, failure handling) lives in
:mod:`finetunekit.training.distributed` and :mod:`finetunekit.distributed.failure`.
"""

from finetunekit.distributed.collectives import (
    all_reduce_sum,
    any_rank,
    broadcast_object,
    gather_rows,
    run_on_main,
)
from finetunekit.distributed.env import (
    barrier,
    init,
    is_initialized,
    is_main_process,
    launched_by_torchrun,
    local_rank,
    owns_process_group,
    rank,
    shutdown,
    world_size,
)

__all__ = [
    "all_reduce_sum",
    "any_rank",
    "barrier",
    "broadcast_object",
    "gather_rows",
    "init",
    "is_initialized",
    "is_main_process",
    "launched_by_torchrun",
    "local_rank",
    "owns_process_group",
    "rank",
    "run_on_main",
    "shutdown",
    "world_size",
]
