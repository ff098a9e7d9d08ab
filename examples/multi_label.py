"""Multi-label fine-tuning on real images: mosaics of 2-4 digits, each labelled with the digits it holds.

    pip install -e ".[demo]"
    python examples/multi_label.py          # FINETUNEKIT_FAST=1 for a quick run (CI)

Shows ``multi_label=True`` (BCE-with-logits, sigmoid outputs), lists of class indices as targets, the
metrics that make sense for it, per-class thresholds tuned on validation data, and save/load keeping them.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from sklearn.datasets import load_digits

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"
rng = np.random.default_rng(0)
digits = load_digits()
cells = np.round(digits.images / 16 * 255).astype(np.uint8)


def mosaic(n: int) -> tuple[np.ndarray, list[list[int]]]:
    """16×16 images of 2-4 digits in a 2×2 grid, and the list of digits in each."""
    images, labels = np.zeros((n, 16, 16), dtype=np.uint8), []
    for i in range(n):
        classes = rng.choice(10, size=int(rng.integers(2, 5)), replace=False)
        for c, cell in zip(classes, rng.choice(4, size=len(classes), replace=False), strict=True):
            r, col = divmod(int(cell), 2)
            images[i, 8 * r : 8 * r + 8, 8 * col : 8 * col + 8] = cells[
                rng.choice(np.flatnonzero(digits.target == c))
            ]
        labels.append(sorted(int(c) for c in classes))
    return images, labels


x_train, y_train = mosaic(96 if FAST else 600)
x_val, y_val = mosaic(64 if FAST else 200)
x_test, y_test = mosaic(64 if FAST else 500)

ft = FineTuner("timm/efficientnet_lite0", num_classes=10, multi_label=True, weights=lite0_weights_path(),
               image_size=32 if FAST else 64, seed=0)  # fmt: skip
ft.compile(metrics=["accuracy", "f1_micro", "f1_macro", "map"])
ft.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=1 if FAST else 8, augment=False, verbose=2)

print("at threshold 0.5:", ft.evaluate(x_test, y_test))
print("per-class thresholds tuned on validation:", ft.tune_thresholds(x_val, y_val))
print("at the tuned thresholds:", ft.evaluate(x_test, y_test))

probs = ft.predict(x_test[:3])  # per-class sigmoid probabilities
for row, truth in zip(probs >= np.asarray(ft.threshold), y_test[:3], strict=True):
    print("predicted digits", np.flatnonzero(row).tolist(), "true", truth)

with tempfile.TemporaryDirectory() as run:
    ft.save(run)
    assert FineTuner.load(run).threshold == ft.threshold  # the thresholds travel with the model
