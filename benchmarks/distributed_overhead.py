"""What finetunekit's DDP costs per training step, against hand-written DDP loops, in the same job.

    torchrun --standalone --nproc_per_node=2 benchmarks/distributed_overhead.py [--steps 60 --repeats 3]

Every variant trains the same model (a small CNN; the stem frozen, as in a GradualUnfreeze phase) on
the same data with the same global batch, gloo on the CPU, one thread per process. Variants:

* ``raw DDP``: a plain loop over a DistributedSampler loader, DDP over the trainable parameters.
* ``raw DDP, find_unused``: the same with ``find_unused_parameters=True``, what a wrapper built once
  over all parameters would need while groups are frozen (the approach finetunekit avoids).
* ``finetunekit fit``: ``FineTuner.fit`` under the same torchrun job (DDP rebuilt per trainable set,
  stop flags agreed per step, metrics reduced per epoch, BN buffers synced per epoch).

Times run from DDP construction to the last step (fit's time includes its setup: first weight broadcast,
DDP construction, the epoch-end buffer broadcast and metric reduction). Prints the median seconds per
step over ``--repeats`` runs and the ratio to ``raw DDP`` (rank 0).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import make_images

from finetunekit import FineTuner, distributed
from finetunekit.strategies import FrozenBackbone


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.GroupNorm(4, 64), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage1(self.stem(x))))


def raw_ddp(x: torch.Tensor, y: torch.Tensor, batch: int, find_unused: bool) -> float:
    """Seconds per step of a hand-written DDP loop (stem frozen)."""
    torch.manual_seed(0)
    model = Net()
    model.stem.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    data = TensorDataset(x, y)
    world = dist.get_world_size()
    loader = DataLoader(data, batch_size=batch // world, sampler=DistributedSampler(data, seed=0))
    loss_fn = nn.CrossEntropyLoss()
    dist.barrier()
    start = time.perf_counter()  # from DDP construction on, as fit's time includes it
    ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
    for xb, yb in loader:
        opt.zero_grad(set_to_none=True)
        loss_fn(ddp(xb), yb).backward()
        opt.step()
    dist.barrier()
    seconds = (time.perf_counter() - start) / len(loader)
    del ddp
    gc.collect()  # a DDP reducer must not outlive the process group (abort at exit)
    return seconds


class StemFrozen(FrozenBackbone):
    """Stem frozen, the rest trains: the same trainable set as the raw loops."""

    def plan(self, n_groups: int, epoch: int) -> list[float | None]:
        return [None] + [1.0] * (n_groups - 1)


def finetunekit_fit(x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    """Seconds per step of ``fit`` on the same float tensors (taken as preprocessed: no transforms)."""
    torch.manual_seed(0)
    ft = FineTuner(Net(), num_classes=10, image_size=16, device="cpu", seed=0, strategy=StemFrozen())
    ft.compile(lr=1e-3, schedule="constant")
    distributed.barrier()
    start = time.perf_counter()
    ft.fit(x, y, batch_size=batch, epochs=1, augment=False, verbose=0)
    distributed.barrier()
    return (time.perf_counter() - start) / -(-len(x) // batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch", type=int, default=32, help="global batch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    images, labels = make_images(args.steps * args.batch, 10, 16, seed=0)
    dist.init_process_group("gloo")  # ours: finetunekit uses it and leaves it alone
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    y = torch.from_numpy(labels)
    results: dict[str, list[float]] = {"raw DDP": [], "raw DDP, find_unused": [], "finetunekit fit": []}
    for _ in range(args.repeats):  # interleaved, so load changes hit every variant alike
        results["raw DDP"].append(raw_ddp(x, y, args.batch, False))
        results["raw DDP, find_unused"].append(raw_ddp(x, y, args.batch, True))
        results["finetunekit fit"].append(finetunekit_fit(x, y, args.batch))
    if dist.get_rank() == 0:
        base = statistics.median(results["raw DDP"])
        print(f"world {dist.get_world_size()} (gloo, CPU, 1 thread/process), {args.steps} steps of global "
              f"batch {args.batch}, median of {args.repeats}")  # fmt: skip
        print(f"{'variant':<24}{'s/step':>10}{'ratio':>8}")
        for name, values in results.items():
            med = statistics.median(values)
            print(f"{name:<24}{med:>10.4f}{med / base:>8.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
