"""After fit: see what the model gets wrong, calibrate it, export it, write a Hub folder. Offline.

    pip install -e ".[demo,plot,export]"
    python examples/understand_and_ship.py            # the numbers in docs/calibration.md, docs/export.md
    FINETUNEKIT_FAST=1 python examples/understand_and_ship.py   # one small seed, for CI

Real data and weights: scikit-learn's digits, EfficientNet-Lite0 with its ImageNet weights. Each seed
splits the digits three ways: 300 to train, 400 to calibrate on, the remaining 1097 to measure on, so
the ECE "after" is measured on images the temperature never saw. Prints one JSON line per seed and a
Markdown table; with ``--img DIR`` also writes the confusion matrix, top losses and reliability plots.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path
from finetunekit.strategies import GradualUnfreeze
from finetunekit.tools.calibrate import expected_calibration_error, model_outputs, softmax

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"


def split(seed: int, n_train: int, n_cal: int) -> tuple[np.ndarray, ...]:
    digits = load_digits()
    images = np.round(digits.images / 16 * 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    parts = np.split(order, [n_train, n_train + n_cal])
    return tuple(a for p in parts for a in (images[p], digits.target[p]))


def run_seed(seed: int, args: argparse.Namespace, img: Path | None) -> dict[str, float]:
    x_tr, y_tr, x_cal, y_cal, x_te, y_te = split(seed, args.n_train, args.n_cal)
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(),
                   strategy=GradualUnfreeze(every=1), image_size=args.image_size, seed=seed,
                   class_names=[str(i) for i in range(10)])  # fmt: skip
    ft.compile(lr=1e-2)
    ft.fit(x_tr, y_tr, epochs=args.epochs, batch_size=32, augment=False, verbose=0)
    test_logits = model_outputs(ft, x_te, y_te).logits
    report = ft.calibrate(x_cal, y_cal)
    t = report["temperature"]
    before, after = softmax(test_logits), softmax(test_logits, t)
    row = {
        "seed": seed, "temperature": t, "test_accuracy_before": float((before.argmax(1) == y_te).mean()),
        "test_accuracy_after": float((after.argmax(1) == y_te).mean()),
        "test_ece_before": expected_calibration_error(before, y_te),
        "test_ece_after": expected_calibration_error(after, y_te),
        "cal_ece_before": report["ece_before"], "cal_ece_after": report["ece_after"],
    }  # fmt: skip
    if img is not None:
        interp = ft.interpret(x_te, y_te)
        interp.plot_confusion_matrix(img / "confusion_matrix_digits.png")
        interp.plot_top_losses(6, path=img / "top_losses_digits.png")
        report.plot(img / "reliability_digits.png")
        print(interp.classification_report())
        print("most confused:", interp.most_confused(5))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        exported = ft.export(Path(tmp) / "digits.onnx", format="onnx")
        row["onnx_max_abs_diff"] = float(exported.max_abs_diff or float("nan"))
        row["onnx_seconds"] = time.perf_counter() - start
        ft.save_for_hub(Path(tmp) / "hub", metrics={"test_accuracy": row["test_accuracy_after"]})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0] if FAST else [0, 1, 2])
    parser.add_argument("--epochs", type=int, default=1 if FAST else 4)
    parser.add_argument("--n-train", type=int, default=100 if FAST else 300)
    parser.add_argument("--n-cal", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=32 if FAST else 64)
    parser.add_argument("--img", type=Path, help="write the plots of the first seed here")
    args = parser.parse_args()
    rows = []
    for i, seed in enumerate(args.seeds):
        rows.append(run_seed(seed, args, args.img if i == 0 else None))
        print(json.dumps(rows[-1]), flush=True)
    print("\n| seed | T | test accuracy (before = after) | test ECE before | test ECE after |")
    print("|---|---|---|---|---|")
    for r in rows:
        accuracy = f"{r['test_accuracy_before']:.3f} = {r['test_accuracy_after']:.3f}"
        eces = f"{r['test_ece_before']:.3f} | {r['test_ece_after']:.3f}"
        print(f"| {r['seed']} | {r['temperature']:.2f} | {accuracy} | {eces} |")


if __name__ == "__main__":
    main()
