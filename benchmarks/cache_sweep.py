"""Sweep the frozen-prefix feature cache over many architectures: does it cut, is it exact, can it crash?

For each model of ``tests/backbones/sweep_table.json`` (every torchvision classifier and the smallest model
of each timm family, at the smallest input size each accepts, at least ``--min-size``): two short fits with
``GradualUnfreeze(milestones={0: 3})`` (so the bottom groups stay frozen while the top two groups and the
head train: the prefix cut), one with the cache and one without, same seed. Reports per model the cache
status from ``summary()`` and the largest weight difference between the two runs, relative to the weight's
scale; then counts: cached, off (with the reasons), crashed. A model that cannot train uncached at that
size is skipped; a crash of the cached run (an exception from ``fit``) is a bug: the cache must switch
itself off instead.

    PYTHONPATH=. python benchmarks/cache_sweep.py                  # everything up to 60M parameters
    PYTHONPATH=. python benchmarks/cache_sweep.py --only resnet vit
"""

from __future__ import annotations

import argparse
import json
import re
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import torch

TABLE = Path(__file__).resolve().parents[1] / "tests" / "backbones" / "sweep_table.json"


def run(spec: str, size: int, cache: bool) -> tuple[dict[str, torch.Tensor], str]:
    from finetunekit import FineTuner
    from finetunekit.strategies import GradualUnfreeze

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    y = np.arange(16) % 3
    x = rng.integers(0, 60, size=(16, size, size, 3))
    for c in range(3):
        x[y == c, :, :, c] += 150
    ft = FineTuner(spec, num_classes=3, pretrained=False, seed=0, device="cpu", image_size=size,
                   strategy=GradualUnfreeze(milestones={0: 3}))  # fmt: skip
    ft.compile(lr=1e-3, optimizer="sgd")  # SGD: Adam would magnify float noise on near-zero gradients
    ft.fit(x.astype(np.uint8), y, epochs=2, batch_size=8, verbose=0, augment=False, cache_features=cache)
    status = next(line for line in ft.summary().splitlines() if line.startswith("feature cache: "))
    return {k: v.detach().clone() for k, v in ft.model.state_dict().items()}, status


def relative_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest weight difference relative to the weight's scale, floored at 0.01: a bias whose gradient
    is zero in theory (one right before a BatchNorm) is ~1e-11 of float noise in both runs."""
    worst = 0.0
    for name, value in a.items():
        if value.is_floating_point():
            scale = max(float(value.abs().max()), 1e-2)
            worst = max(worst, float((value - b[name]).abs().max()) / scale)
    return worst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="*", default=None, help="regexes; run the specs that match any")
    p.add_argument("--max-params", type=float, default=60e6)
    p.add_argument("--min-size", type=int, default=32)
    p.add_argument("--max-size", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    table = json.loads(TABLE.read_text())
    cases = [(f"timm/{name}", size) for name, size in table["timm"].values()]
    cases += [(f"torchvision/{name}", size) for name, size in table["torchvision"].items()]
    if args.only:
        cases = [c for c in cases if any(re.search(o, c[0]) for o in args.only)]
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    start = time.time()
    for spec, size in cases:
        size = max(int(size), args.min_size)
        if size > args.max_size:
            counts["skipped (input too large)"] += 1
            continue
        try:
            from finetunekit.backbones import build_backbone

            n_params = sum(p.numel() for p in build_backbone(spec, 3, pretrained=False).model.parameters())
            if n_params > args.max_params:
                counts["skipped (too many parameters)"] += 1
                continue
            plain, _ = run(spec, size, cache=False)
        except Exception as e:  # the model cannot train at this size: not the cache's business
            counts["skipped (cannot train at this size)"] += 1
            print(f"skip {spec}@{size}: {type(e).__name__}: {str(e)[:120]}")
            continue
        try:
            cached, status = run(spec, size, cache=True)
        except Exception as e:  # a crash is what this sweep looks for
            counts["crashed"] += 1
            print(f"CRASH {spec}@{size}: {type(e).__name__}: {str(e)[:300]}")
            traceback.print_exc(limit=3)
            continue
        diff = relative_diff(cached, plain)
        used = " on in " in status or status.startswith("feature cache: on")
        counts["cached" if used else "not cached"] += 1
        if not used:
            why = re.sub(r"off in epochs? [\d, -]+: ", "", status.removeprefix("feature cache: "))
            reasons[why[:90]] += 1
        if used and diff > 1e-3:
            counts["cached but differs > 1e-3"] += 1
        print(f"{spec}@{size}: rel diff {diff:.1e}  {status[15:200]}", flush=True)
    print(f"\n{len(cases)} models in {time.time() - start:.0f} s: {dict(counts)}")
    for reason, n in reasons.most_common():
        print(f"  {n:3d} not cached: {reason}")


if __name__ == "__main__":
    main()
