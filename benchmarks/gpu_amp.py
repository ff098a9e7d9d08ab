"""Training throughput on a GPU: mixed precision + channels_last through FineTuner vs hand-written loops.

Prints one table of images/s (median of ``--repeats`` timed epochs after a warm-up epoch) for:
a plain fp32 loop, a plain AMP + channels_last loop (the best a user writes by hand), FineTuner fp32 and
FineTuner ``compile(precision=..., channels_last=True)``, all on the same model, data and batch size.

    PYTHONPATH=. python benchmarks/gpu_amp.py                 # needs CUDA
    PYTHONPATH=. python benchmarks/gpu_amp.py --cpu           # smoke run on CPU (bf16, tiny sizes)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    n = args.batch_size * args.steps
    x = rng.integers(0, 256, size=(n, args.image_size, args.image_size, 3), dtype=np.uint8)
    return x, rng.integers(0, 10, size=n)


def _time_epochs(run_epoch: Callable[[], None], device: torch.device, repeats: int) -> float:
    run_epoch()  # warm-up: cudnn autotuning, allocator, lazy init
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        run_epoch()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def plain(args: argparse.Namespace, device: torch.device, amp: bool) -> float:
    """The hand-written loop: data preprocessed once and already on the device (its best case)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False, num_classes=10).to(device)
    x, y = _data(args)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float().div_(255).to(device)
    yt = torch.from_numpy(y).to(device)
    memory_format = torch.channels_last if amp else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dtype = torch.float16 if args.precision == "16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=amp and args.precision == "16")
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        model.train()
        perm = torch.randperm(len(xt), device=device)
        for i in range(0, len(xt), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = xt[idx].contiguous(memory_format=memory_format)
            with torch.autocast(device.type, dtype=dtype, enabled=amp):
                loss = loss_fn(model(xb), yt[idx])
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    return len(xt) / _time_epochs(epoch, device, args.repeats)


def finetuner(args: argparse.Namespace, device: torch.device, amp: bool) -> float:
    from finetunekit import FineTuner

    x, y = _data(args)
    ft = FineTuner(f"timm/{args.arch}", num_classes=10, pretrained=False, image_size=args.image_size,
                   seed=0, device=device)  # fmt: skip
    options: dict[str, Any] = {"precision": args.precision, "channels_last": True} if amp else {}
    ft.compile(lr=1e-3, schedule="constant", **options)
    return len(x) / _time_epochs(
        lambda: ft.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0, augment=False), device,
        args.repeats,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="batches per epoch")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="16", choices=["16", "bf16"])
    p.add_argument("--cpu", action="store_true", help="smoke run on CPU: bf16, resnet18, 64px, 4 steps")
    args = p.parse_args(argv)
    if args.cpu:
        device = torch.device("cpu")
        args.arch, args.image_size, args.batch_size, args.steps, args.repeats = "resnet18", 64, 16, 4, 1
        args.precision = "bf16"
    elif not torch.cuda.is_available():
        sys.exit("gpu_amp.py measures GPU throughput and no CUDA device is available; "
                 "run it on a GPU machine, or pass --cpu for a smoke run")  # fmt: skip
    else:
        device = torch.device("cuda")
        torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    rows = [
        ("plain loop fp32", plain(args, device, amp=False)),
        (f"plain loop {args.precision} + channels_last", plain(args, device, amp=True)),
        ("FineTuner fp32", finetuner(args, device, amp=False)),
        (f"FineTuner {args.precision} + channels_last", finetuner(args, device, amp=True)),
    ]
    print(f"\n{name}; torch {torch.__version__}; timm/{args.arch} at {args.image_size}px, batch "
          f"{args.batch_size}, {args.steps} steps per epoch, median of {args.repeats} epochs")  # fmt: skip
    base = rows[0][1]
    print(f"{'run':40s} {'images/s':>10s} {'vs plain fp32':>14s}")
    for label, ips in rows:
        print(f"{label:40s} {ips:10.1f} {ips / base:13.2f}x")
    print(f"FineTuner {args.precision} vs plain {args.precision}: {rows[3][1] / rows[1][1]:.3f}x")


if __name__ == "__main__":
    main()
