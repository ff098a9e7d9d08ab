"""FrozenBackbone under fit's defaults: the head on cached, un-augmented features vs augmented epochs.

What ``fit(x, y)`` does with ``FrozenBackbone()`` and every other argument at its default
(``compile()`` defaults too, so the default augment=True): the head trains on un-augmented features,
computed once by the feature cache. Against it, in the same run, over several seeds:

- ``ft_always``: the same fit with ``augment="always"`` (random crops and flips every epoch, so the
  backbone runs every epoch, uncached): what fit did by default before;
- ``plain_frozen``: the hand-written frozen loop of ``benchmarks/performance.py`` (preprocessed float
  tensors, backbone frozen with its BatchNorm in eval mode, the full forward every epoch).

Real architecture and weights, offline: timm ``efficientnet_lite0`` with ImageNet weights, on
scikit-learn's digits upscaled to ``--image-size``. Every run is its own subprocess.

    PYTHONPATH=. python benchmarks/frozen_default.py --seeds 0 1 2 --epochs 8
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import performance  # the plain loop and the subprocess runner of benchmarks/performance.py

MODES = ("plain_frozen", "ft_default", "ft_always")
KEYS = ("threads", "epochs", "n_train", "image_size", "batch_size", "lr", "seed")


def run_finetuner(args: argparse.Namespace, augment: bool | str) -> dict[str, Any]:
    from finetunekit import FineTuner
    from finetunekit.callbacks import Callback
    from finetunekit.strategies import FrozenBackbone

    x_train, y_train, x_test, y_test = performance._data(args)
    times: list[float] = []

    class EpochTimer(Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    ft = FineTuner(
        "timm/efficientnet_lite0",
        num_classes=10,
        weights=performance._weights(),
        image_size=args.image_size,
        seed=args.seed,
        strategy=FrozenBackbone(),
        device="cpu",
    )
    ft.compile()  # every default
    start = time.perf_counter()
    ft.fit(x_train, y_train, epochs=args.epochs, verbose=0, callbacks=[EpochTimer()], augment=augment)
    seconds = time.perf_counter() - start
    acc = ft.evaluate(x_test, y_test, batch_size=128)["accuracy"]
    lines = [ln for ln in ft.summary().splitlines() if ln.startswith(("feature cache", "augmentation"))]
    return {"epoch_times": times, "fit_seconds": seconds, "accuracy": acc, "notes": lines}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.worker == "plain_frozen":
        run = performance.PlainRun(args, "frozen")
        start = time.perf_counter()
        times = [run.epoch() for _ in range(args.epochs)]
        out = {"epoch_times": times, "fit_seconds": time.perf_counter() - start, "accuracy": run.accuracy()}
    else:
        out = run_finetuner(args, True if args.worker == "ft_default" else "always")
    print("RESULT " + json.dumps(out))


def _stats(runs: list[dict[str, Any]]) -> dict[str, float]:
    later = [statistics.median(r["epoch_times"][1:]) for r in runs]
    accs = [r["accuracy"] for r in runs]
    fit = statistics.median(r["fit_seconds"] for r in runs)
    return {
        "later": statistics.median(later),
        "first": statistics.median(r["epoch_times"][0] for r in runs),
        "fit": fit,
        "acc": statistics.mean(accs),
        "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
        "acc_per_s": statistics.mean(r["accuracy"] / r["fit_seconds"] for r in runs),
    }


def print_table(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace) -> None:
    s = {mode: _stats(runs[mode]) for mode in MODES}
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f}; "
        f"torch {torch.__version__}; torch.set_num_threads({args.threads}); device cpu"
    )
    print(
        f"efficientnet_lite0 (ImageNet weights) FrozenBackbone, digits: {args.n_train} train images at "
        f"{args.image_size}px, {args.epochs} epochs, seeds {args.seeds} (time medians, accuracy mean ± sd)\n"
    )
    plain = s["plain_frozen"]["later"]
    header = (
        "run",
        "epoch after 1st",
        "first epoch",
        "whole fit",
        "test accuracy",
        "accuracy/s",
        "vs plain (after 1st)",
    )
    print("  ".join(f"{h:<20}" for h in header))
    for mode in MODES:
        r = s[mode]
        cells = (
            mode,
            f"{r['later']:.4f}s",
            f"{r['first']:.3f}s",
            f"{r['fit']:.2f}s",
            f"{r['acc']:.3f} ± {r['acc_sd']:.3f}",
            f"{r['acc_per_s']:.4f}",
            f"{plain / r['later']:.1f}x faster",
        )
        print("  ".join(f"{c:<20}" for c in cells))
    for mode in ("ft_default", "ft_always"):
        print(f"{mode}: {' | '.join(runs[mode][0]['notes'])}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--n-train", type=int, default=384)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="fit's default; the plain loop's too")
    parser.add_argument("--lr", type=float, default=2e-3, help="the plain loop's (fit uses compile()'s)")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
    for seed in args.seeds:
        args.seed = seed
        for mode in MODES:
            runs[mode].append(performance.spawn_worker(__file__, args, mode, KEYS))
            print(f"  seed {seed} {mode}: {runs[mode][-1]['accuracy']:.3f}", file=sys.stderr)
    print_table(runs, args)


if __name__ == "__main__":
    main()
