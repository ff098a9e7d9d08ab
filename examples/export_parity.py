"""Export several real timm / torchvision architectures to every format and print the parity table.

    pip install -e ".[export]"
    python examples/export_parity.py                  # the table in docs/export.md
    FINETUNEKIT_FAST=1 python examples/export_parity.py   # one architecture, for CI

Architectures are built with ``pretrained=False`` at 64 px; the head is re-drawn with std 2 so the
probabilities are far from uniform (a wrong export would show). ``max |diff|`` is the file, run by its
own runtime on a batch of 3 of another size than traced, against the eager model on the same input.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from finetunekit import FineTuner

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"
ARCHS = ["timm/resnet18"] if FAST else [
    "timm/resnet18", "timm/efficientnet_lite0", "timm/convnext_atto", "timm/vit_tiny_patch16_224",
    "torchvision/resnet18", "torchvision/mobilenet_v3_small", "torchvision/efficientnet_b0",
]  # fmt: skip
FORMATS = [("onnx", ".onnx"), ("torchscript", ".pt"), ("exported_program", ".pt2")]


def sharp(spec: str) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(spec, num_classes=10, pretrained=False, image_size=64, device="cpu")
    params = dict(ft.model.named_parameters())
    with torch.no_grad():
        for name in ft.groups[-1].param_names:
            params[name].normal_(0, 2.0)
        size = ft.data_config.input_size
        logits = ft.model.eval()(torch.randn(8, *size))
    ft.temperature = float(logits.std())  # logits / T ~ unit scale: probabilities far from 0, 1 and uniform
    return ft


def main() -> None:
    warnings.filterwarnings("ignore")
    print("| architecture | format | preprocessing | checked with | max \\|diff\\| | seconds |")
    print("|---|---|---|---|---|---|")
    for spec in ARCHS:
        ft = sharp(spec)
        for fmt, suffix in FORMATS:
            for pre in (True, False):
                with tempfile.TemporaryDirectory() as tmp:
                    start = time.perf_counter()
                    r = ft.export(Path(tmp) / f"m{suffix}", format=fmt, preprocessing=pre)
                    seconds = time.perf_counter() - start
                print(f"| {spec} | {fmt} | {'uint8 NHWC' if pre else 'float NCHW'} | {r.checked_with} | "
                      f"{r.max_abs_diff:.1e} | {seconds:.1f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
