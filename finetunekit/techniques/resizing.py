"""Progressive resizing (``compile(progressive_resizing=...)``): train on smaller images first.

fastai's and Composer's recipe: the early epochs learn coarse features, which a lower resolution shows
as well, at a fraction of the compute (a convolution's cost grows with the pixel count); the last epochs
train at the full size, the one validation, evaluation and prediction use. As Composer's
``ProgressiveResizing`` does, the training batch is resized on the device just before the forward pass
(``torch.nn.functional.interpolate``, bilinear with antialiasing), so the data pipeline, the decode
cache and validation are untouched.

The size is a function of the epoch alone, rounded to ``size_increment`` pixels: nothing to checkpoint,
a resumed run trains each epoch at the size the uninterrupted one did, and every DDP rank uses the same
size. Sizes change per epoch, not per step, so a compiled model recompiles at most once per size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from finetunekit.errors import ConfigError


@dataclass(frozen=True)
class ProgressiveResizing:
    """Train epoch ``e`` of ``E`` at ``scale(e)`` of the full size: ``initial_scale`` at epoch 0, growing
    linearly towards 1 over the first ``G = E - ceil(E * finetune_fraction)`` epochs
    (``initial_scale + (1 - initial_scale) * e / G``), then full size.

    Args:
        initial_scale: the first epochs' fraction of the full height and width, in (0, 1]. 0.5 (Composer's
            default) trains the first epoch on a quarter of the pixels.
        finetune_fraction: the share of epochs at the full size, at the end, in [0, 1] (rounded up to
            whole epochs, so any value > 0 ends with at least one). Composer's 0.2.
        size_increment: sizes are rounded down to multiples of this (at least one increment), so
            strided backbones see whole feature maps.
    """

    initial_scale: float = 0.5
    finetune_fraction: float = 0.2
    size_increment: int = 32

    def __post_init__(self) -> None:
        scale, frac, inc = self.initial_scale, self.finetune_fraction, self.size_increment
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale <= 1:
            raise ConfigError(
                f"ProgressiveResizing(initial_scale={scale!r}) is invalid; expected a float in (0, 1], "
                "e.g. 0.5 (half the height and width)"
            )
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1:
            raise ConfigError(
                f"ProgressiveResizing(finetune_fraction={frac!r}) is invalid; expected a float in [0, 1], "
                "e.g. 0.2 (the last fifth of the epochs at full size)"
            )
        if isinstance(inc, bool) or not isinstance(inc, int) or inc < 1:
            raise ConfigError(
                f"ProgressiveResizing(size_increment={inc!r}) is invalid; expected an int >= 1, e.g. 32"
            )

    def scale(self, epoch: int, epochs: int) -> float:
        """The fraction of the full size for ``epoch`` (0-based) of a fit of ``epochs`` epochs."""
        full = math.ceil(epochs * self.finetune_fraction - 1e-9)  # 10 * 0.3 is 3.0000000000000004
        growing = epochs - full  # any fraction > 0 gives at least one full-size epoch
        if epochs <= 1 or epoch >= growing:
            return 1.0
        return self.initial_scale + (1.0 - self.initial_scale) * epoch / growing

    def size(self, epoch: int, epochs: int, full: tuple[int, int]) -> tuple[int, int]:
        """The (height, width) to train ``epoch`` at, for images of size ``full``."""
        scale = self.scale(epoch, epochs)
        if scale >= 1.0:
            return full
        inc = self.size_increment
        return tuple(min(n, max(inc, math.floor(n * scale / inc) * inc)) for n in full)  # type: ignore[return-value]

    def sizes(self, epochs: int, full: tuple[int, int]) -> list[tuple[int, int]]:
        """Every epoch's training size, for ``summary()`` and the fit's check."""
        return [self.size(e, epochs, full) for e in range(epochs)]


def check_progressive_resizing(value: object) -> ProgressiveResizing | None:
    """compile()'s argument: None or False (off), True (the defaults) or a ProgressiveResizing."""
    if value is None or value is False:
        return None
    if value is True:
        return ProgressiveResizing()
    if isinstance(value, ProgressiveResizing):
        return value
    raise ConfigError(
        f"progressive_resizing={value!r} is invalid; expected True, False or "
        "ProgressiveResizing(initial_scale=0.5, finetune_fraction=0.2)"
    )


def resize_batch(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (N, C, H, W) at ``size``; the same tensor when it already has that size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def describe(sizes: list[tuple[int, int]], full: tuple[int, int]) -> str:
    """``epochs 0-1 at 112x112, 2 at 160x160, 3-4 at 224x224 (full)`` for summary()."""
    parts, start = [], 0
    for e in range(1, len(sizes) + 1):
        if e == len(sizes) or sizes[e] != sizes[start]:
            span = f"{start}" if e - 1 == start else f"{start}-{e - 1}"
            h, w = sizes[start]
            parts.append(f"{span} at {h}x{w}" + (" (full)" if sizes[start] == full else ""))
            start = e
    return "epochs " + ", ".join(parts)
