"""Tiny models and data shared by the tests (importable as `helpers`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn


class TinyNet(nn.Module):
    """Three layer groups (stem, stage1, head) with BatchNorm in the backbone; ~2k parameters."""

    def __init__(self, in_chans: int = 3, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage1(self.stem(x))))


def make_images(
    n: int = 120, num_classes: int = 3, size: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N x H x W x 3 images whose class is the dominant colour channel: linearly separable."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % num_classes
    x = rng.integers(0, 60, size=(n, size, size, 3))
    for c in range(num_classes):
        x[y == c, :, :, c % 3] += 150 + 30 * (c // 3)
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def on_global_step(fn: Any) -> Any:
    """A callback calling ``fn(global_step)`` after every training batch, the position read from the
    fit's RunView (``callback.run``), as user callbacks do."""
    from finetunekit.callbacks import Callback

    class OnGlobalStep(Callback):
        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            run = self.require_run()
            fn(run.epoch * run.steps_per_epoch + batch)

    return OnGlobalStep()
