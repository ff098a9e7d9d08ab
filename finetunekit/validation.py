"""Argument checks shared by FineTuner's methods: one place, one wording, before any training step."""

from __future__ import annotations

import os
from typing import Any

import torch

from finetunekit.errors import ConfigError


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} is invalid; expected an integer >= 1")
    return value


def check_fit_args(
    batch_size: Any, epochs: Any, initial_epoch: Any, validation_split: Any, verbose: Any
) -> int:
    """Check fit()'s scalar arguments; return verbose as 0, 1 or 2 ("auto" -> 1, as in Keras)."""
    check_positive_int("batch_size", batch_size)
    check_positive_int("epochs", epochs)
    if (
        isinstance(initial_epoch, bool)
        or not isinstance(initial_epoch, int)
        or not 0 <= initial_epoch < epochs
    ):
        raise ConfigError(
            f"initial_epoch={initial_epoch!r} is invalid with epochs={epochs}; expected 0 <= initial_epoch < "
            f"epochs (epochs is the index of the last epoch + 1, as in Keras)"
        )
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, (int, float))
        or not (0 <= validation_split < 1)
    ):
        raise ConfigError(
            f"validation_split={validation_split!r} is invalid; expected a float in [0, 1), e.g. 0.1"
        )
    if verbose == "auto":
        return 1
    if verbose not in (0, 1, 2):
        raise ConfigError(
            f"verbose={verbose!r} is invalid; expected 'auto', 0 (silent), 1 (progress bar) or 2"
        )
    return int(verbose)


def resolve_device(device: str | torch.device) -> torch.device:
    """ "auto" picks CUDA, then Apple MPS, then CPU. Under torchrun, "auto" and "cuda" mean this
    process's own GPU, ``cuda:LOCAL_RANK`` (finetunekit.distributed)."""
    if device in ("auto", "cuda") and torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        local = int(os.environ["LOCAL_RANK"])  # [distributed]
        return torch.device(f"cuda:{local}" if local < torch.cuda.device_count() else "cuda")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(
            f"device={device!r} is not a device; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} but CUDA is not available here; use device='auto' or 'cpu'")
    return dev
