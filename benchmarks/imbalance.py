"""Class imbalance on real images: minority-class recall and overall accuracy, with and without help.

Data: scikit-learn's digits. Training takes ``--major`` images of each of the digits 0-4 and ``--minor``
of each of 5-9 (a 10:1 imbalance by default); the test set is every other digit (about 1,400, balanced).
Model: real ImageNet EfficientNet-Lite0 weights (offline package) at ``--image-size`` px, FullFineTune,
AdamW + one-cycle at the same settings for every run, augmentation off (flips change digits).

Runs per seed: no correction, ``fit(class_weight="balanced")`` (loss weights, Keras semantics) and
``fit(sampling_weights="balanced")`` (a weighted sampler, fastai's weighted_dataloaders).

    PYTHONPATH=. python benchmarks/imbalance.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import numpy as np
import torch

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path

RUNS: dict[str, dict[str, Any]] = {
    "none": {},
    "class_weight=balanced": {"class_weight": "balanced"},
    "sampling_weights=balanced": {"sampling_weights": "balanced"},
}


def imbalanced_digits(seed: int, major: int, minor: int) -> tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): digits 0-4 with ``major`` images each, 5-9 with ``minor``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images / 16.0 * 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train = []
    for c in range(10):
        pool = rng.permutation(np.flatnonzero(labels == c))
        train.append(pool[: major if c < 5 else minor])
    train_idx = np.concatenate(train)
    test_idx = np.setdiff1d(np.arange(len(labels)), train_idx)
    return images[train_idx], labels[train_idx], images[test_idx], labels[test_idx]


def run(name: str, args: argparse.Namespace, seed: int, data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(),
                   image_size=args.image_size, seed=seed)  # fmt: skip
    ft.compile(lr=args.lr, metrics=["accuracy", "balanced_accuracy"])
    start = time.perf_counter()
    ft.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, augment=False, verbose=0,
           **RUNS[name])  # fmt: skip
    seconds = time.perf_counter() - start
    pred = ft.predict(x_test, batch_size=256).argmax(1)
    recall = np.array([np.mean(pred[y_test == c] == c) for c in range(10)])
    return {
        "run": name, "seed": seed, "accuracy": float(np.mean(pred == y_test)),
        "minority_recall": float(recall[5:].mean()), "majority_recall": float(recall[:5].mean()),
        "seconds": seconds,
    }  # fmt: skip


def report(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| run | test accuracy | minority recall (5-9) | majority recall (0-4) | fit s |",
        "|---|---|---|---|---|",
    ]
    for name in RUNS:
        mine = [r for r in rows if r["run"] == name]
        if not mine:
            continue

        def cell(key: str, rows: list[dict[str, Any]] = mine) -> str:
            values = [r[key] for r in rows]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            return f"{statistics.mean(values):.3f}{spread}"

        seconds = statistics.mean(r["seconds"] for r in mine)
        cells = " | ".join(cell(k) for k in ("accuracy", "minority_recall", "majority_recall"))
        lines.append(f"| {name} | {cells} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    fast = os.environ.get("FINETUNEKIT_FAST") == "1"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0] if fast else [0, 1, 2])
    parser.add_argument("--major", type=int, default=20 if fast else 60)
    parser.add_argument("--minor", type=int, default=3 if fast else 6)
    parser.add_argument("--epochs", type=int, default=1 if fast else 6)
    parser.add_argument("--image-size", type=int, default=32 if fast else 64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="append one JSON line per run")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for seed in args.seeds:
        data = imbalanced_digits(seed, args.major, args.minor)
        for name in RUNS:
            rows.append(run(name, args, seed, data))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print(report(rows))
    return rows


if __name__ == "__main__":
    main()
