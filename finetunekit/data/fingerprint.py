"""A short digest of the data a fit trains on, stored in backups so a resume can tell other data.

Same number of batches is not same data: a resume on another folder or array of equal size would
otherwise continue silently with the old optimizer state. The digest covers the sample count, the
labels, the images of in-memory datasets (whole up to 64 MiB, else 256 evenly spaced 256 KiB slices)
and, for folders, each file's last two path parts (class/name) and size, so moving the data folder
elsewhere keeps the digest. A user's own Dataset or DataLoader contributes its type and length only.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import Subset

_FULL = 64 << 20
_SLICES, _SLICE = 256, 256 << 10


def _feed_buffer(h: Any, data: np.ndarray) -> None:
    flat = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    h.update(str(flat.nbytes).encode())
    if flat.nbytes <= _FULL:
        h.update(flat.tobytes())
        return
    for start in np.linspace(0, flat.nbytes - _SLICE, _SLICES).astype(np.int64):
        h.update(flat[start : start + _SLICE].tobytes())


def _feed_tensor(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        _feed_buffer(h, value.detach().cpu().numpy())
    elif isinstance(value, np.ndarray):
        _feed_buffer(h, value)


def _feed_files(h: Any, files: list[Any]) -> None:
    for f in files:
        parts = os.fspath(f).replace("\\", "/").split("/")[-2:]
        try:
            size = os.stat(f).st_size
        except OSError:
            size = -1
        h.update(f"{'/'.join(parts)}:{size};".encode())


def _feed(h: Any, dataset: Any) -> None:
    try:
        n = len(dataset)
    except TypeError:
        n = -1
    h.update(f"{type(dataset).__name__}:{n};".encode())
    if isinstance(dataset, Subset):
        h.update(np.asarray(dataset.indices, dtype=np.int64).tobytes())
        _feed(h, dataset.dataset)
        return
    _feed_tensor(h, getattr(dataset, "labels", None))
    _feed_tensor(h, getattr(dataset, "images", None))
    files = getattr(dataset, "files", None)
    if isinstance(files, list):
        _feed_files(h, files)
    inner = getattr(dataset, "dataset", None)
    if inner is None:
        return
    if type(inner).__module__.startswith("finetunekit."):  # a wrapper of ours (per-sample seeding): its data
        _feed(h, inner)
    else:  # a user's Dataset: its type only
        h.update(f"{type(inner).__module__}.{type(inner).__qualname__}".encode())


def data_fingerprint(dataset: Any) -> dict[str, Any]:
    """``{"samples": n, "digest": hex}`` of ``dataset`` (what :mod:`finetunekit.data` builds)."""
    h = hashlib.sha256()
    _feed(h, dataset)
    try:
        n: int | None = len(dataset)
    except TypeError:
        n = None
    return {"samples": n, "digest": h.hexdigest()[:32]}
