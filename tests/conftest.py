"""Shared fixtures: a tiny CNN with BatchNorm and separable image data, so unit tests run in seconds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

# Tiny models run fastest on one thread, and a loaded 2-core machine otherwise thrashes (50x slower).
torch.set_num_threads(1)


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def images() -> tuple[np.ndarray, np.ndarray]:
    return make_images()
