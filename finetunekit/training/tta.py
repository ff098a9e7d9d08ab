"""Test-time augmentation: average the class probabilities of an image and its horizontal mirror.

The wrapper returns log-probabilities, so ``evaluate(tta=True)``'s cross-entropy is the loss of the
averaged prediction and ``predict(tta=True)``'s softmax gives the averaged probabilities back.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class FlipTTA(nn.Module):
    """``log(mean(softmax(model(x)), softmax(model(flip(x)))))`` for N×C×H×W inputs."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = torch.log_softmax(self.model(x).float(), dim=1)
        flipped = torch.log_softmax(self.model(torch.flip(x, dims=[-1])).float(), dim=1)
        return torch.logaddexp(plain, flipped) - math.log(2.0)
