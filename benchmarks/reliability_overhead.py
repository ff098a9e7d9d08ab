"""What reliability costs per training step: the non-finite guard and a full training backup.

Prints a table of median times (1 torch thread, CPU) for one optimizer step of a real timm architecture
(pretrained=False) with and without the guard (isfinite check + BatchNorm buffer snapshot), and for
writing one full BackupAndRestore checkpoint (capture + atomic write + sha256), as ratios to the plain step.

    PYTHONPATH=. python benchmarks/reliability_overhead.py [--model timm/resnet18] [--size 64] [--batch 16]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from finetunekit import FineTuner
from finetunekit.saving import checkpoint
from finetunekit.training import loop, nonfinite
from finetunekit.training.train_state import FitRun, capture


def time_steps(ctx: loop.TrainContext, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        loop.train_step(ctx, x, y)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="timm/resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ft = FineTuner(args.model, num_classes=10, pretrained=False, image_size=args.size, device="cpu", seed=0)
    ft.compile()
    ctx = ft._train_context(steps=100, epochs=1)
    plan = ft._apply_plan(0)
    loop.write_lrs(ctx.optimizer, ctx.base_lr, 1.0, plan)
    ft.model.train()
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.arange(args.batch) % 10
    real_guard, real_snapshot = nonfinite.guarded_step, nonfinite.snapshot_buffers

    def plain_guard(c: loop.TrainContext, loss: torch.Tensor, buffers: list[torch.Tensor]) -> bool:
        c.optimizer.step()
        return True

    guarded, plain, backup, bookkeeping = [], [], [], []
    ft._run = FitRun(ctx, [], None, 1)
    ctx.tracker = loop.MetricTracker(ctx.metrics, ctx.device)
    with tempfile.TemporaryDirectory() as tmp:
        time_steps(ctx, x, y, 2)  # warm-up
        for r in range(args.repeats):
            for variant in ("plain", "guarded") if r % 2 == 0 else ("guarded", "plain"):  # no order bias
                real = variant == "guarded"
                nonfinite.guarded_step = real_guard if real else plain_guard
                nonfinite.snapshot_buffers = real_snapshot if real else lambda c: []
                (guarded if real else plain).append(time_steps(ctx, x, y, args.steps))
            start = time.perf_counter()
            for _ in range(100):
                real_snapshot(ctx)
                bool(torch.isfinite(x[0, 0, 0, 0]))
            bookkeeping.append((time.perf_counter() - start) / 100)
            start = time.perf_counter()
            checkpoint.write_checkpoint(Path(tmp) / f"ckpt-{r}", capture(ft, 0, 1), {"kind": "training"})
            backup.append(time.perf_counter() - start)
    ft._run = None
    base = statistics.median(plain)
    print(f"{args.model}, {args.size}px, batch {args.batch}, CPU, 1 thread, median of {args.repeats}")
    print(f"{'what':<44}{'ms':>10}{'x plain step':>14}")
    for name, values in (("plain step (forward, backward, AdamW)", plain),
                         ("step with the non-finite guard", guarded),
                         ("the guard's own work (buffer copy, isfinite)", bookkeeping),
                         ("one full training backup (write + sha256)", backup)):  # fmt: skip
        m = statistics.median(values)
        print(f"{name:<44}{m * 1e3:>10.1f}{m / base:>14.3f}")


if __name__ == "__main__":
    main()
