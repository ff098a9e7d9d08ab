"""Multi-label on real images: mosaics of 2-4 digits labelled with the set of digits they contain.

Data: scikit-learn's digits, split by digit image into a train pool and a test pool (no digit image is in
both). Each mosaic is a 2×2 grid of 8×8 cells (16×16 px): 2 to 4 cells hold digits of distinct classes,
the others stay blank; the label is the multi-hot set of those classes. ``--n-train`` training mosaics,
``--n-test`` test mosaics, a quarter of the training mosaics held out to tune the thresholds.

Runs, same backbone (real ImageNet EfficientNet-Lite0 weights, offline package), epochs and optimizer:

- ``multi_label=True``: BCE-with-logits, sigmoid outputs, per-class thresholds tuned on the held-out part;
- ``single-label (argmax)``: what the old error message told a multi-hot user to do, ``y.argmax(1)``
  (the lowest digit present), trained with cross-entropy; its softmax scores are thresholded per class
  with thresholds tuned the same way.

Metrics on the test mosaics: mAP (macro average precision), F1 micro / macro and subset accuracy (the
exact set right).

    PYTHONPATH=. python benchmarks/multi_label.py --seeds 0 1 2
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
from finetunekit.metrics.thresholds import tune_thresholds


def mosaics(
    images: np.ndarray, labels: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """``n`` 16×16 uint8 mosaics of 2-4 distinct digits and their (n, 10) multi-hot labels."""
    x = np.zeros((n, 16, 16), dtype=np.uint8)
    y = np.zeros((n, 10), dtype=np.float32)
    by_class = [np.flatnonzero(labels == c) for c in range(10)]
    for i in range(n):
        k = int(rng.integers(2, 5))
        classes = rng.choice(10, size=k, replace=False)
        cells = rng.choice(4, size=k, replace=False)
        for c, cell in zip(classes, cells, strict=True):
            r, col = divmod(int(cell), 2)
            x[i, 8 * r : 8 * r + 8, 8 * col : 8 * col + 8] = images[rng.choice(by_class[c])]
        y[i, classes] = 1.0
    return x, y


def mosaic_split(seed: int, n_train: int, n_test: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images / 16.0 * 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    half = len(order) // 2
    rng = np.random.default_rng(seed + 1000)
    train = mosaics(images[order[:half]], digits.target[order[:half]], n_train, rng)
    test = mosaics(images[order[half:]], digits.target[order[half:]], n_test, rng)
    return (*train, *test)


def scores(probs: np.ndarray, thresholds: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from sklearn import metrics as skm

    pred = (probs >= thresholds).astype(int)
    return {
        "map": float(skm.average_precision_score(y, probs, average="macro")),
        "f1_micro": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
    }


def run(name: str, args: argparse.Namespace, seed: int, data: tuple[np.ndarray, ...]) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    n_fit = len(x_train) * 3 // 4
    multi = name == "multi_label=True"
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(),
                   image_size=args.image_size, seed=seed, multi_label=multi)  # fmt: skip
    ft.compile(lr=args.lr)
    target = y_train[:n_fit] if multi else y_train[:n_fit].argmax(1)
    start = time.perf_counter()
    ft.fit(x_train[:n_fit], target, epochs=args.epochs, batch_size=args.batch_size, augment=False, verbose=0)
    seconds = time.perf_counter() - start
    held_out = ft.predict(x_train[n_fit:], batch_size=256)
    thresholds = np.asarray(tune_thresholds(held_out, y_train[n_fit:]))
    result = scores(ft.predict(x_test, batch_size=256), thresholds, y_test)
    return {"run": name, "seed": seed, **result, "seconds": seconds}


def report(rows: list[dict[str, Any]]) -> str:
    keys = ("map", "f1_micro", "f1_macro", "subset_accuracy")
    lines = ["| run | mAP | F1 micro | F1 macro | subset accuracy | fit s |", "|---|---|---|---|---|---|"]
    for name in ("multi_label=True", "single-label (argmax)"):
        mine = [r for r in rows if r["run"] == name]
        cells = []
        for key in keys:
            values = [r[key] for r in mine]
            spread = f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        seconds = statistics.mean(r["seconds"] for r in mine)
        lines.append(f"| {name} | {' | '.join(cells)} | {seconds:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    fast = os.environ.get("FINETUNEKIT_FAST") == "1"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0] if fast else [0, 1, 2])
    parser.add_argument("--n-train", type=int, default=64 if fast else 800)
    parser.add_argument("--n-test", type=int, default=64 if fast else 1000)
    parser.add_argument("--epochs", type=int, default=1 if fast else 8)
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
        data = mosaic_split(seed, args.n_train, args.n_test)
        for name in ("multi_label=True", "single-label (argmax)"):
            rows.append(run(name, args, seed, data))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    print(report(rows))
    return rows


if __name__ == "__main__":
    main()
