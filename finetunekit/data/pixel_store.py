"""Where the decode cache keeps pixels: one flat uint8 buffer for N images of known shapes.

In memory the buffer is an anonymous *shared* mapping: DataLoader workers forked from the process that
built it write decoded images into the same pages the main process and the other workers read, so one
decode serves every worker and every later epoch. Over the memory budget it is a file (``np.memmap``),
which any process, including spawned workers, DDP ranks and later runs, maps by its path; its header
keeps each entry's (size, mtime) key, so an entry whose file changed is decoded again.

An image is written fully before its "filled" flag is set, and a sample is read at most once per epoch,
so readers never see a half-written image; two processes filling the same entry write the same bytes.
"""

from __future__ import annotations

import logging
import mmap
import os
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import torch

from finetunekit.errors import ConfigError

logger = logging.getLogger("finetunekit")

_MAGIC = b"finetunekit-px1\0"  # 16 bytes, then int64 count and int64 pixel bytes
_HEADER = 32
_live: weakref.WeakValueDictionary[str, PixelStore] = weakref.WeakValueDictionary()


def _layout(count: int) -> tuple[int, int, int]:
    """Offsets of (keys, filled flags, pixels) in a store file; pixels start 64-byte aligned."""
    keys = _HEADER
    filled = keys + 16 * count
    pixels = (filled + count + 63) // 64 * 64
    return keys, filled, pixels


class PixelStore:
    """Pixels of N images of ``shapes`` (H, W) with ``channels`` channels; ``get`` / ``put`` per image."""

    def __init__(self, shapes: np.ndarray, channels: int, path: Path | None) -> None:
        self.shapes = np.asarray(shapes, dtype=np.int64)
        self.channels = int(channels)
        sizes = self.channels * self.shapes[:, 0] * self.shapes[:, 1]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.nbytes = int(self.offsets[-1])
        self.path = path
        self.pixels: np.ndarray | None = None
        self.filled: np.ndarray | None = None
        self.keys = np.full((len(self.shapes), 2), -1, dtype=np.int64)
        if path is None:
            self._map_memory()
        else:
            self._map_file(path)

    def __len__(self) -> int:
        return len(self.shapes)

    def _map_memory(self) -> None:
        count = len(self.shapes)
        self._mapping = mmap.mmap(-1, max(1, self.nbytes + count))  # MAP_SHARED | MAP_ANONYMOUS
        self.pixels = np.frombuffer(self._mapping, dtype=np.uint8, count=self.nbytes)
        self.filled = np.frombuffer(self._mapping, dtype=np.uint8, count=count, offset=self.nbytes)

    def _map_file(self, path: Path) -> None:
        count = len(self.shapes)
        keys_at, filled_at, pixels_at = _layout(count)
        total = pixels_at + self.nbytes
        if not _header_matches(path, count, self.nbytes, total):
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(staging, "wb") as f:  # sparse: pages take disk space as images fill them
                f.write(_MAGIC + np.array([count, self.nbytes], dtype=np.int64).tobytes())
                f.write(np.full(count * 2, -1, dtype=np.int64).tobytes())
                f.truncate(total)
            os.replace(staging, path)
        raw = np.memmap(path, dtype=np.uint8, mode="r+", shape=(total,))
        self.keys = raw[keys_at:filled_at].view(np.int64).reshape(count, 2)
        self.filled = raw[filled_at : filled_at + count]
        self.pixels = raw[pixels_at:]

    def refresh(self, keys: np.ndarray) -> int:
        """Forget entries whose file key (size, mtime) differs from ``keys``; returns how many."""
        assert self.filled is not None
        changed = (self.keys != keys).any(axis=1)
        self.filled[changed] = 0
        self.keys[changed] = keys[changed]
        return int(changed.sum())

    def get(self, index: int) -> torch.Tensor | None:
        """A copy of image ``index`` (uint8 C×H×W), or None when it is not decoded yet."""
        if self.pixels is None or self.filled is None or not self.filled[index]:
            return None
        start, end = self.offsets[index], self.offsets[index + 1]
        h, w = self.shapes[index]
        return torch.from_numpy(self.pixels[start:end].copy()).view(self.channels, int(h), int(w))

    def put(self, index: int, image: torch.Tensor) -> None:
        if self.pixels is None or self.filled is None:
            return
        expected = (self.channels, *map(int, self.shapes[index]))
        if tuple(image.shape) != expected:
            raise ValueError(f"decoded image {index} has shape {tuple(image.shape)}, planned {expected}")
        start, end = self.offsets[index], self.offsets[index + 1]
        self.pixels[start:end] = image.contiguous().numpy().reshape(-1)
        self.filled[index] = 1  # after the pixels: a reader that sees the flag sees the image

    def filled_count(self) -> int:
        return 0 if self.filled is None else int(np.count_nonzero(self.filled))

    def __getstate__(self) -> dict[str, Any]:
        """A file store reopens its file; a memory store cannot cross into a spawned process, so there it
        is detached (``get`` finds nothing, ``put`` keeps nothing: images are decoded on each access)."""
        return {"shapes": self.shapes, "channels": self.channels, "path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["path"] is not None:
            PixelStore.__init__(self, state["shapes"], state["channels"], state["path"])
            return
        self.shapes, self.channels, self.path = state["shapes"], state["channels"], None
        self.offsets = np.zeros(len(self.shapes) + 1, dtype=np.int64)
        self.nbytes, self.pixels, self.filled = 0, None, None
        self.keys = np.full((len(self.shapes), 2), -1, dtype=np.int64)

    def __deepcopy__(self, memo: dict[int, Any]) -> PixelStore:
        return self  # a cache of deterministic pixels: copies may share it


def _header_matches(path: Path, count: int, nbytes: int, total: int) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER)
        size = path.stat().st_size
    except OSError:
        return False
    expected = _MAGIC + np.array([count, nbytes], dtype=np.int64).tobytes()
    return head == expected and size == total


def open_store(
    digest: str, shapes: np.ndarray, channels: int, keys: np.ndarray, budget: int, folder: Path
) -> PixelStore:
    """The store for one decoded set (``digest`` names its files and target): the live one of this
    process if any, else in memory while all live memory stores fit ``budget`` bytes, else a file in
    ``folder`` (reused by later runs)."""
    store = _live.get(digest)
    if store is None:
        needed = int(channels * np.asarray(shapes, dtype=np.int64).prod(axis=1).sum())
        used = sum(s.nbytes for s in list(_live.values()) if s.path is None)
        if used + needed <= budget:
            store = PixelStore(shapes, channels, None)
        else:
            store = _file_store(digest, shapes, channels, folder, needed, budget)
        _live[digest] = store
    store.refresh(keys)
    return store


def _file_store(
    digest: str, shapes: np.ndarray, channels: int, folder: Path, needed: int, budget: int
) -> PixelStore:
    path = folder / f"{digest}.pixels"
    try:
        store = PixelStore(shapes, channels, path)
    except OSError as exc:
        raise ConfigError(
            f"the decode cache folder {str(folder)!r} cannot hold {needed / 2**20:.0f} MiB of decoded images "
            f"({exc}); expected a writable folder with space. Fix: finetunekit.data.decode_cache.configure("
            "folder=...) with another folder, or a larger memory_budget."
        ) from exc
    logger.info(
        "decoded images (%.0f MiB) exceed the decode cache's memory budget (%.0f MiB): cached in %s",
        needed / 2**20, budget / 2**20, path,
    )  # fmt: skip
    return store
