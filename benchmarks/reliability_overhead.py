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
from finetunekit.callbacks import Callback
from finetunekit.saving import checkpoint
from finetunekit.training import loop, nonfinite
from finetunekit.training.context import LoopState, StepConfig
from finetunekit.training.step import Stepper


def time_steps(cfg: StepConfig, state: LoopState, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        loop.train_step(cfg, state, x, y, i)
    return (time.perf_counter() - start) / n


class TimeBackups(Callback):
    """Times ``repeats`` full training backups (capture through the RunView + atomic write + sha256)."""

    def __init__(self, folder: str, repeats: int) -> None:
        super().__init__()
        self.folder, self.repeats, self.times = Path(folder), repeats, []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch == 0:
            run = self.require_run()
            for r in range(self.repeats):
                start = time.perf_counter()
                files = run.capture_state(0, 1)
                checkpoint.write_checkpoint(self.folder / f"ckpt-{r}", files, {"kind": "training"})
                self.times.append(time.perf_counter() - start)


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
    assert ft.optimizer is not None and ft._compiled is not None
    plan = ft._apply_plan(0)
    cfg = StepConfig(optimizer=ft.optimizer, loss_fn=ft._compiled.loss_fn, schedule=lambda p: 1.0,
                     metrics=["accuracy"], device=ft.device, steps_per_epoch=100, total_steps=100,
                     train_bn=True, stepper=Stepper(ft._compiled.compute, ft.model, ft.device))  # fmt: skip
    state = LoopState(model=ft.model, base_lr=ft.base_lr)
    loop.write_lrs(cfg.optimizer, state.base_lr, 1.0, plan)
    ft.model.train()
    x, y = torch.randn(args.batch, 3, args.size, args.size), torch.arange(args.batch) % 10
    real_guard, real_snapshot = nonfinite.guarded_step, nonfinite.snapshot_buffers

    def plain_guard(s: LoopState, opt: torch.optim.Optimizer, loss: torch.Tensor, b: list) -> bool:
        opt.step()
        return True

    guarded, plain, bookkeeping = [], [], []
    time_steps(cfg, state, x, y, 2)  # warm-up
    for r in range(args.repeats):
        for variant in ("plain", "guarded") if r % 2 == 0 else ("guarded", "plain"):  # no order bias
            real = variant == "guarded"
            nonfinite.guarded_step = real_guard if real else plain_guard
            nonfinite.snapshot_buffers = real_snapshot if real else lambda s: []
            (guarded if real else plain).append(time_steps(cfg, state, x, y, args.steps))
        start = time.perf_counter()
        for _ in range(100):
            real_snapshot(state)
            bool(torch.isfinite(x[0, 0, 0, 0]))
        bookkeeping.append((time.perf_counter() - start) / 100)
    nonfinite.guarded_step, nonfinite.snapshot_buffers = real_guard, real_snapshot
    with tempfile.TemporaryDirectory() as tmp:
        timer = TimeBackups(tmp, args.repeats)
        images = torch.randint(0, 255, (args.batch * 2, 3, args.size, args.size), dtype=torch.uint8)
        ft.fit(images.permute(0, 2, 3, 1).numpy(), (torch.arange(args.batch * 2) % 10).numpy(),
               batch_size=args.batch, epochs=1, verbose=0, callbacks=[timer])  # fmt: skip
        backup = timer.times
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
