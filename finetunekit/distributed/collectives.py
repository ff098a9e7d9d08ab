"""The few collectives finetunekit needs, each a no-op (or identity) in a single process.

Small control messages (stop flags, objects, rank 0's success or failure) travel over a CPU gloo group;
metric sums stay on the device of the default group, so evaluation adds one reduction, not a host sync
per step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from finetunekit.distributed import env
from finetunekit.errors import DistributedError

T = TypeVar("T")


def _active() -> bool:
    return env.is_initialized() and env.world_size() > 1


def _comm_device(device: torch.device) -> torch.device:
    """NCCL reduces CUDA tensors; gloo reduces CPU tensors (and a few CUDA ones, not reliably)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over ranks, on ``tensor``'s device (the same tensor in one process)."""
    if not _active():
        return tensor
    buf = tensor.to(_comm_device(tensor.device))
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.to(tensor.device)


def any_rank(flag: bool) -> bool:
    """True on every rank when it is True on at least one: how ranks agree to stop together."""
    if not _active():
        return flag
    t = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=env.control_group())
    return bool(t.item())


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` holds it, on every rank (picklable objects; control-sized)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=env.control_group())
    return box[0]


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in one process."""
    if not _active():
        return [obj]
    out: list[T] = [obj] * env.world_size()  # placeholders, replaced by every rank's object
    dist.all_gather_object(out, obj, group=env.control_group())
    return out


def run_on_main(fn: Callable[[], T], what: str = "write") -> T | None:
    """Run ``fn`` on rank 0 only; every rank returns after it finished (a barrier), and a failure on rank
    0 raises on every rank, so no rank waits forever for a file that will not come.

    This is how a callback writes a file: ``run_on_main(lambda: save(...))`` on every rank. Returns
    ``fn()``'s value on rank 0 and None elsewhere; in a single process it is just ``fn()``.
    """
    if not _active():
        return fn()
    result: T | None = None
    error: BaseException | None = None
    if env.is_main_process():
        try:
            result = fn()
        except Exception as e:
            error = e
    message = broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if message is not None:
        raise DistributedError(
            f"rank 0 failed to {what}: {message}; every rank stops so none waits for it (see rank 0's "
            "traceback for the cause)"
        )
    return result


def gather_rows(rows: np.ndarray) -> np.ndarray:
    """Concatenate every rank's ``rows`` (N_r x ...) in rank order, on every rank.

    Ranks hold contiguous shards of the input, so rank order is input order. Shards may differ in size
    (no padding samples are ever evaluated); they are padded only for transport and trimmed after.
    """
    if not _active():
        return rows
    sizes = [0] * env.world_size()
    local = torch.from_numpy(np.ascontiguousarray(rows))
    counts = torch.tensor([local.shape[0]], dtype=torch.int64)
    gathered = [torch.zeros_like(counts) for _ in sizes]
    group = env.control_group()
    dist.all_gather(gathered, counts, group=group)
    sizes = [int(c.item()) for c in gathered]
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[:n] for p, n in zip(parts, sizes, strict=True)]).numpy()


@torch.no_grad()
def broadcast_state(module: nn.Module, buffers_only: bool = False) -> None:
    """Make every rank's parameters (and buffers) rank 0's, in place.

    Used once before the first distributed use of a model (so evaluation or prediction without training
    agrees across ranks even when heads were initialised without a seed) and after each epoch for
    buffers: under DDP each rank updates BatchNorm statistics from its own batch, and rank 0's are the
    ones DDP itself treats as authoritative.
    """
    if not _active():
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for t in tensors:
        buf = t.data.to(_comm_device(t.device))
        dist.broadcast(buf, src=0)
        if buf.data_ptr() != t.data.data_ptr():
            t.data.copy_(buf)


def shard_range(n: int) -> range:
    """This rank's contiguous, unpadded share of ``n`` evaluation samples (sizes differ by at most 1)."""
    world, r = env.world_size(), env.rank()
    return range(r * n // world, (r + 1) * n // world)
