"""Survive a crash: run this, press Ctrl-C (or `kill -9` it) mid-training, run it again.

The second run restores the backup written every 20 batches and continues exactly where the first
stopped: on CPU the final weights are bitwise those of a run that was never interrupted. A best-model
checkpoint and a CSV log are kept alongside, and a NaN loss would stop training with the last good
weights instead of corrupting them.

    PYTHONPATH=. python examples/resume_after_crash.py
    FINETUNEKIT_FAST=1 python examples/resume_after_crash.py   # a few samples, 1 epoch (CI)

A resumed run says so ("BackupAndRestore: resumed from epoch e, step s"); Ctrl-C itself stops after the
step being computed and prints how to resume.
"""

from __future__ import annotations

import os

from finetunekit import FineTuner
from finetunekit.callbacks import (
    BackupAndRestore,
    CSVLogger,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)
from finetunekit.demo import load_digits_images

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples, 1 epoch


def main() -> None:
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=96 if FAST else 800)
    ft = FineTuner("timm/resnet10t", num_classes=10, pretrained=False, image_size=32, seed=0, device="cpu")
    ft.compile(lr=3e-3, schedule="one_cycle")
    ft.fit(
        x_train, y_train, batch_size=32, epochs=1 if FAST else 4, validation_split=0.1,
        callbacks=[
            BackupAndRestore("runs/digits/backup", save_freq=2 if FAST else 20),  # deleted when done
            ModelCheckpoint("runs/digits/best", monitor="val_accuracy", save_best_only=True),
            CSVLogger("runs/digits/log.csv"),
            ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=1),
            TerminateOnNaN(),
        ],
    )  # fmt: skip
    best = FineTuner.load("runs/digits/best")
    accuracy = best.compile().evaluate(x_test, y_test)["accuracy"]
    print(
        f"Shown: a ResNet trained from scratch on {len(x_train)} digits, with backups every few batches, a "
        f"best-model checkpoint and a CSV log; the best checkpoint reaches {accuracy:.3f} test accuracy "
        "(chance 0.1)." + (" Fast mode: 1 epoch." if FAST else "")
    )


if __name__ == "__main__":
    main()
