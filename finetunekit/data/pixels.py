"""Pixel values that fit 8 bits: 16-bit, 32-bit integer and float PIL images scaled, never clipped.

PIL's ``convert("RGB")`` clips a 16-bit PNG (40000/65535 becomes 255, white); photo tools scale it. Kept
apart from the decoders (images.py) and the transforms so both can use it without importing each other.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from finetunekit.errors import DataError

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def to_8bit(image: Any, what: str) -> Any:
    """A PIL image whose pixel values fit 8 bits, scaled rather than clipped (see module docstring)."""
    from PIL import Image

    mode = image.mode
    if mode not in (*_SIXTEEN_BIT, "I", "F"):
        return image
    values = np.asarray(image).astype(np.float64)
    if mode == "F":
        top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        if not np.isfinite(values).all() or (values.size and (values.min() < 0 or values.max() > 255)):
            raise DataError(
                f"{what} is a floating-point image with values outside [0, 1] and [0, 255] (or NaN); "
                "expected 8- or 16-bit pixels. Fix: convert it to an 8-bit image (e.g. PNG), scaled your way."
            )
    else:
        top = 65535.0 if mode in _SIXTEEN_BIT or not values.size or values.max() <= 65535 else 2.0**32 - 1
    scaled = np.clip(np.rint(values * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(scaled, mode="L")
