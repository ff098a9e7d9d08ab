"""Image files decoded once, at a reduced size, into a uint8 cache that DataLoader workers share.

Decoding a photo costs far more than training a small model on it at 64-224 px: a 1600x1200 JPEG takes
~3.7 ms to decode at full size. So every file is decoded **once**, straight to a reduced size, and later
epochs augment the stored uint8 pixels (torchvision v2 on tensors, as for in-memory arrays):

- **Reduced size.** Augmenting: a short side from what the smallest RandomResizedCrop needs at the
  training resolution (training size / sqrt(0.35), 1.7x) to 2x the training size, aspect kept; not
  augmenting (validation, evaluate, predict): exactly the training size. JPEGs get there through PIL's
  ``draft`` (the decoder scales in the DCT domain by 1/2, 1/4 or 1/8), other formats through
  ``reduce`` (integer box filter), then one antialiased resize when still too large. :func:`decode_image`
  is the one function that turns a file into pixels, and it gives the same pixels whether the result
  is then cached or not, so results never depend on the cache.
- **Where.** In memory (an anonymous shared mapping that forked DataLoader workers write into and every
  process reads) while the decoded set fits the memory budget, else a memory-mapped file in the cache
  folder that later runs reuse. Each entry is keyed by the file's (path, size, mtime): a changed file
  is decoded again. The first epoch fills the cache as it goes, in the workers, so decoding overlaps
  training; nothing is decoded before training starts.

:func:`configure` sets the budget and the folder (see docs/performance.md).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from finetunekit.data.pixel_store import PixelStore, open_store
from finetunekit.data.pixels import to_8bit
from finetunekit.data.transforms import ImageTransform, to_chw_uint8
from finetunekit.errors import ConfigError, DataError

FORMAT_VERSION = 1  # part of every cache key: bump when decode_image's pixels change
_ORIENTATION_TAG = 0x0112
_SWAPS_AXES = frozenset({5, 6, 7, 8})  # EXIF orientations that rotate by 90 degrees


@dataclass(frozen=True)
class DecodeSettings:
    """``memory_budget``: bytes of decoded pixels kept in memory (all live caches together); above it, a
    cache goes to a file in ``folder``. ``enabled=False`` decodes on every access (same pixels)."""

    memory_budget: int
    folder: Path
    enabled: bool = True


def _default_settings() -> DecodeSettings:
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - non-POSIX
        ram = 16 * 2**30
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(os.environ.get("FINETUNEKIT_DECODE_CACHE") or cache_home / "finetunekit" / "decoded")
    return DecodeSettings(memory_budget=min(8 * 2**30, ram // 4), folder=folder)


_settings = _default_settings()


def configure(
    *,
    memory_budget: int | None = None,
    folder: str | os.PathLike[str] | None = None,
    enabled: bool | None = None,
) -> DecodeSettings:
    """Change the decode cache's settings for datasets built from now on; returns the previous ones.

    Defaults: a quarter of the RAM (at most 8 GiB) in memory, then files under
    ``$FINETUNEKIT_DECODE_CACHE`` or ``~/.cache/finetunekit/decoded``.
    """
    global _settings
    if memory_budget is not None and (
        isinstance(memory_budget, bool) or not isinstance(memory_budget, int) or memory_budget < 0
    ):
        raise ConfigError(
            f"memory_budget={memory_budget!r}; expected a number of bytes >= 0, e.g. 4 * 2**30 for 4 GiB "
            "(0 keeps every decoded set in a file in the cache folder)."
        )
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"enabled={enabled!r}; expected True or False.")
    old = _settings
    _settings = replace(
        old,
        memory_budget=old.memory_budget if memory_budget is None else memory_budget,
        folder=old.folder if folder is None else Path(folder),
        enabled=old.enabled if enabled is None else enabled,
    )
    return old


def settings() -> DecodeSettings:
    return _settings


MIN_CROP_SCALE = 0.35  # ImageTransform's RandomResizedCrop(scale=(0.35, 1)): its smallest crop's area


@dataclass(frozen=True)
class DecodeTarget:
    """What files decode to: ``in_chans`` channels and either exactly ``exact`` = (H, W), or (augmenting)
    a short side between ``min_side`` and ``short_side``, aspect kept.

    ``min_side`` is what the smallest crop needs to be cut at the training size without upsampling
    (training size / sqrt(0.35), 1.7x); JPEG's draft may stop anywhere from there, so a 640x480 file
    decodes at 1/4 scale (160x120) for 64 px training; larger results are resized to ``short_side``
    (2x the training size).
    """

    in_chans: int
    short_side: int
    min_side: int
    exact: tuple[int, int] | None
    resample: str

    @staticmethod
    def for_transform(transform: ImageTransform) -> DecodeTarget:
        interpolation = transform.data_config.interpolation
        resample = interpolation if interpolation in ("bicubic", "nearest") else "bilinear"
        if transform.augment:
            size = max(transform.size)
            min_side = math.ceil(size / math.sqrt(MIN_CROP_SCALE))
            return DecodeTarget(transform.in_chans, 2 * size, min_side, None, resample)
        return DecodeTarget(transform.in_chans, 0, 0, transform.size, resample)


class _Plan(NamedTuple):
    """How one file becomes the target's pixels: EXIF orientation, integer ``reduce`` factor after the
    draft, and the final (H, W)."""

    orientation: int
    factor: int
    shape: tuple[int, int]


def _plan(image: Any, target: DecodeTarget) -> _Plan:
    """Apply the JPEG draft to ``image`` (opened, not loaded: header only) and plan the rest. Used both to
    lay out the cache and to decode, so the two always agree."""
    orientation = _orientation(image)
    swapped = orientation in _SWAPS_AXES
    need_h, need_w = target.exact if target.exact is not None else (target.min_side, target.min_side)
    image.draft("L" if target.in_chans == 1 else "RGB", (need_h, need_w) if swapped else (need_w, need_h))
    width, height = image.size[::-1] if swapped else image.size  # upright, after the draft
    factor = max(1, min(width // need_w, height // need_h))
    width, height = -(-width // factor), -(-height // factor)  # what Image.reduce returns
    if target.exact is not None:
        return _Plan(orientation, factor, target.exact)
    short = min(width, height)
    if short <= target.short_side:
        return _Plan(orientation, factor, (height, width))
    scale = target.short_side / short
    return _Plan(orientation, factor, (max(1, round(height * scale)), max(1, round(width * scale))))


def _orientation(image: Any) -> int:
    try:
        return int(image.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # a broken EXIF block: PIL's exif_transpose ignores it too
        return 1


def _resample(name: str) -> Any:
    from PIL import Image

    return {"bicubic": Image.Resampling.BICUBIC, "nearest": Image.Resampling.NEAREST}.get(
        name, Image.Resampling.BILINEAR
    )


def decode_image(path: Path, target: DecodeTarget) -> torch.Tensor:
    """One file -> uint8 C×H×W at ``target``'s size: draft (JPEG: DCT-domain scaling), upright, integer
    ``reduce``, then one antialiased resize when needed (bilinear to the short side when augmenting,
    since crops resample again; the backbone's interpolation to the exact size otherwise).

    The only place files become pixels, so cached and uncached samples are identical.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            plan = _plan(image, target)
            upright = ImageOps.exif_transpose(image) if plan.orientation != 1 else image
            upright = to_8bit(upright, str(path))  # 16-bit and float images scaled, never clipped
            if plan.factor >= 2:
                upright = upright.reduce(plan.factor)
            out_h, out_w = plan.shape
            if upright.size != (out_w, out_h):
                resample = target.resample if target.exact is not None else "bilinear"
                upright = upright.resize((out_w, out_h), _resample(resample))
            tensor = to_chw_uint8(upright, target.in_chans, str(path))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"could not decode image file {path} ({exc}); remove or replace it.") from exc
    assert tensor is not None  # PIL images are always uint8 here
    return tensor


def _file_key(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def planned_shapes(files: list[Path], target: DecodeTarget) -> np.ndarray:
    """(H, W) each file decodes to, from headers only (no pixels are decoded)."""
    from PIL import Image

    if target.exact is not None:  # every file decodes to the training size: no header needed
        return np.tile(np.array(target.exact, dtype=np.int64), (len(files), 1))
    shapes = np.empty((len(files), 2), dtype=np.int64)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                shapes[i] = _plan(image, target).shape
        except (OSError, SyntaxError, ValueError) as exc:
            raise DataError(f"could not read image file {path} ({exc}); remove or replace it.") from exc
    return shapes


def _digest(files: list[Path], shapes: np.ndarray, target: DecodeTarget) -> str:
    """Names one decoded set: format version, target, and every file's absolute path and planned shape.
    The files' (size, mtime) keys are checked per entry (PixelStore.refresh), not hashed here, so one
    changed file costs one decode, not the whole set."""
    h = hashlib.sha256(f"{FORMAT_VERSION}|{target}".encode())
    for path in files:
        h.update(os.fsencode(os.path.abspath(path)) + b"\0")
    h.update(np.ascontiguousarray(shapes, dtype=np.int64).tobytes())
    return h.hexdigest()[:32]


class DecodedImages:
    """The images of ``files`` as ``transform`` takes them (uint8 C×H×W at the decode target's size),
    decoded on first access and cached for every later one (see the module docstring).

    Built in the main process, before DataLoader workers start, so forked workers share its store.
    """

    def __init__(
        self,
        files: list[Path],
        transform: ImageTransform,
        headers: dict[str, np.ndarray] | None = None,
    ) -> None:
        import torchvision.transforms.v2  # noqa: F401  # now, so forked workers inherit it (seconds each)

        self.files = files
        self.target = DecodeTarget.for_transform(transform)
        self._headers: dict[str, np.ndarray] = {} if headers is None else headers  # shared with twins
        config = settings()
        self.store: PixelStore | None = None
        if config.enabled:
            shapes = planned_shapes(files, self.target)
            digest = _digest(files, shapes, self.target)
            keys = self._keys()
            self.store = open_store(
                digest, shapes, self.target.in_chans, keys, config.memory_budget, config.folder
            )

    def _keys(self) -> np.ndarray:
        if "keys" not in self._headers:  # shared with twins: one stat per file
            self._headers["keys"] = np.array([_file_key(p) for p in self.files], dtype=np.int64)
        return self._headers["keys"]

    def for_transform(self, transform: ImageTransform) -> DecodedImages:
        """The images for another transform (a validation twin decodes to the training size)."""
        if DecodeTarget.for_transform(transform) == self.target:
            return self
        return DecodedImages(self.files, transform, self._headers)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self.store is not None:
            cached = self.store.get(index)
            if cached is not None:
                return cached
        image = decode_image(self.files[index], self.target)
        if self.store is not None:
            self.store.put(index, image)
        return image
