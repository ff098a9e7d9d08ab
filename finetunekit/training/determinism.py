"""``fit(deterministic=True)``: torch's deterministic algorithms for one fit, the previous mode after.

Seeds alone make CPU runs bitwise reproducible; on GPU some kernels (atomics in scatter/index_add,
cuDNN autotuning) still vary between runs. Deterministic mode trades some speed for equal results, so
it is opt-in and confined to the fit that asked for it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    # cuBLAS needs this before its first use to be deterministic; harmless elsewhere.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.deterministic = previous[2]
        torch.backends.cudnn.benchmark = previous[3]


def seed_everything(seed: int) -> None:
    """Python, numpy and torch global generators from one seed (``FineTuner(seed=...)``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
