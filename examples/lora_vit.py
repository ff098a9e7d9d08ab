"""LoRA on a ViT, composed with gradual unfreezing, then a merged save that plain timm loads.

No ViT weights are available offline, so the ViT here is random (set ``pretrained=True`` with network,
or ``weights="vit.safetensors"``); everything else is what a real run does: adapters on the attention and
MLP projections, only they and the head train, ``summary()`` shows their count per layer group,
gradient checkpointing trades compute for activation memory, ``ft.save`` writes the merged model (no
peft needed to load it) and ``save(adapters_only=True)`` the few adapter tensors.

    PYTHONPATH=. python examples/lora_vit.py            # FINETUNEKIT_FAST=1 for a quick run
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file

from finetunekit import FineTuner
from finetunekit.demo import load_digits_images
from finetunekit.strategies import GradualUnfreeze, LoRA


def main() -> None:
    fast = bool(os.environ.get("FINETUNEKIT_FAST"))
    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=64 if fast else 300)
    if fast:
        x_test, y_test = x_test[:200], y_test[:200]
    ft = FineTuner("timm/vit_tiny_patch16_224", num_classes=10, pretrained=False, image_size=32, seed=0,
                   strategy=[LoRA(rank=8, alpha=16), GradualUnfreeze(milestones={0: 3, 2: 99})])  # fmt: skip
    ft.compile(lr=5e-3, grad_checkpointing=True)
    epochs = 1 if fast else 6
    print(ft.summary(epochs=epochs))
    ft.fit(x_train, y_train, batch_size=32, epochs=epochs, augment=False, verbose=0)
    print(ft.summary())
    print("test accuracy:", ft.evaluate(x_test, y_test)["accuracy"])
    with tempfile.TemporaryDirectory() as tmp:
        ft.save(Path(tmp) / "merged")
        plain = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32)
        plain.load_state_dict(load_file(str(Path(tmp) / "merged" / "model.safetensors")))
        x = torch.randn(4, 3, 32, 32)
        with torch.no_grad():
            diff = (plain.eval()(x) - ft.model.eval()(x)).abs().max().item()
        print(f"plain timm model from the merged save: max logit difference {diff:.2e}")
        ft.save(Path(tmp) / "adapters", adapters_only=True)
        n = sum(t.numel() for t in load_file(str(Path(tmp) / "adapters" / "model.safetensors")).values())
        print(f"adapters_only save: {n:,} values ({n / sum(p.numel() for p in plain.parameters()):.1%})")
    assert np.isfinite(diff) and diff < 1e-4


if __name__ == "__main__":
    main()
