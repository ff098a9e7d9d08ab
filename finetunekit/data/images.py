"""Decoding image files as users' photo tools show them, and checking every file decodes up front.

- EXIF orientation is applied (``ImageOps.exif_transpose``): a phone photo stored sideways with an
  orientation tag is shown upright by every viewer, so it must be trained upright too.
- 16-bit images (PNG / TIFF mode ``I;16``, ``I``) are scaled to 8 bits (``v * 255 / 65535``): PIL's own
  ``convert("L")`` clips them, so a value of 40000 would become 255 (white).
- :func:`check_files` fully decodes every file once before training, at reduced size where the format
  allows (JPEG's DCT scaling through ``Image.draft``), in a few threads. A truncated JPEG passes
  ``Image.verify()`` (it reads headers only) and would otherwise fail mid-epoch, after steps were taken.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from finetunekit.data.pixels import to_8bit
from finetunekit.data.transforms import to_chw_uint8
from finetunekit.errors import ConfigError, DataError

BAD_FILE_POLICIES = ("raise", "skip")
DRAFT_SIZE = 8  # pixels: JPEGs are decoded at their smallest DCT scale (1/8) for the up-front check


def check_policy(on_bad_file: Any) -> str:
    if on_bad_file not in BAD_FILE_POLICIES:
        raise ConfigError(
            f"on_bad_file={on_bad_file!r} is invalid; expected one of {list(BAD_FILE_POLICIES)} ('raise' "
            "stops before training and names the files, 'skip' leaves them out with one warning)."
        )
    return str(on_bad_file)


def load_image(path: str | os.PathLike[str], in_chans: int) -> torch.Tensor:
    """One image file -> uint8 C×H×W with ``in_chans`` channels, upright, 16-bit scaled."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            tensor = to_chw_uint8(to_8bit(upright, str(path)), in_chans, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"could not decode image file {path} ({exc}); remove or replace it.") from exc
    assert tensor is not None  # PIL images are always uint8 here
    return tensor


def decode_error(path: Path) -> str | None:
    """None when ``path`` decodes completely (at reduced size when possible), else the reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.draft(image.mode, (DRAFT_SIZE, DRAFT_SIZE))  # JPEG: decode at 1/2..1/8 scale
            image.load()
            to_8bit(image, str(path))
    except Exception as exc:  # PIL raises many types for broken files
        return f"{type(exc).__name__}: {str(exc)[:80]}"
    return None


def check_files(files: Sequence[Path], what: str, on_bad_file: str = "raise") -> list[Path]:
    """``files`` that decode; the others raise a DataError naming them (``"raise"``) or are left out
    with one warning naming them (``"skip"``)."""
    workers = max(1, min(8, os.cpu_count() or 1, len(files)))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
        errors = list(pool.map(decode_error, files, chunksize=64))
    bad = [f"{path} ({error})" for path, error in zip(files, errors, strict=True) if error is not None]
    if not bad:
        return list(files)
    listed = f"{'; '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}"
    if on_bad_file == "raise":
        raise DataError(
            f"{what} has {len(bad)} image file(s) that cannot be decoded: {listed}. Checked before training, "
            "so no step was taken. Fix: remove or replace these files, or pass "
            "ImageFolder(path, on_bad_file='skip') to leave them out."
        )
    warnings.warn(
        f"{what}: skipping {len(bad)} of {len(files)} image file(s) that cannot be decoded: {listed}",
        RuntimeWarning,
        stacklevel=4,
    )
    return [path for path, error in zip(files, errors, strict=True) if error is None]
