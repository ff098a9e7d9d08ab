"""In-memory images (numpy arrays, tensors) -> a Dataset, checked once up front.

uint8 images are converted to the storage the model wants in one pass (channels-first, channel count,
and, without augmentation, the input size), so each epoch only normalizes. Float images are the
user's own preprocessing and are checked, not changed.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch

from finetunekit.data.augment import check_float_augment
from finetunekit.data.datasets import ArrayImageDataset, PreprocessedDataset, TransformedDataset
from finetunekit.data.normcheck import warn_if_misnormalized
from finetunekit.data.transforms import ImageTransform, adapt_channels
from finetunekit.errors import DataError

logger = logging.getLogger("finetunekit")

_CHUNK = 1024  # images converted at a time: bounds the float temporaries of resizing
_EAGER_RESIZE_MAX_BYTES = 4 * 2**30  # above this, resize per batch instead of holding a resized copy
_CHANNEL_COUNTS = (1, 3, 4)
_UNNORMALIZED_MAX = 10.0


def as_cpu_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A CPU tensor sharing memory with ``x`` where possible (read-only arrays are copied)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if not x.flags.writeable:
        x = x.copy()
    try:
        return torch.from_numpy(x)
    except TypeError as exc:  # object arrays: usually a list of images of different sizes
        raise DataError(
            f"images of numpy dtype {x.dtype} cannot be used ({exc}); expected uint8 or float32. If "
            "they are images of different sizes, resize them to one size and np.stack them, "
            "or pass a folder or Dataset."
        ) from exc


def _to_nchw(images: torch.Tensor, what: str) -> torch.Tensor:
    """uint8 N×H×W or N×H×W×C (Keras layout; N×C×H×W also understood) -> N×C×H×W."""
    if images.ndim == 3:
        return images.unsqueeze(1)
    if images.ndim == 4 and images.shape[-1] in _CHANNEL_COUNTS:
        return images.permute(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in _CHANNEL_COUNTS:
        return images
    raise DataError(
        f"{what} has uint8 images of shape {tuple(images.shape)}; expected N×H×W×C with C in (1, 3, 4) "
        "or N×H×W (grayscale). A single image needs a batch axis: x[None]."
    )


def _uint8_dataset(
    images: torch.Tensor, labels: np.ndarray | None, transform: ImageTransform, what: str
) -> ArrayImageDataset:
    images = _to_nchw(images, what)
    if images.shape[1] == 1 and transform.in_chans != 1:
        logger.info("%s: grayscale images are repeated to %d channels", what, transform.in_chans)
    target_bytes = len(images) * images.shape[1] * transform.size[0] * transform.size[1]
    resize = not transform.augment and target_bytes <= _EAGER_RESIZE_MAX_BYTES
    chunks = []
    for start in range(0, len(images), _CHUNK):
        chunk = adapt_channels(images[start : start + _CHUNK], transform.in_chans, what)
        chunks.append(transform.resize(chunk) if resize else chunk.contiguous())
    return ArrayImageDataset(torch.cat(chunks), labels, transform)


def _check_float_shape(images: torch.Tensor, in_chans: int, what: str) -> None:
    shape = tuple(images.shape)
    if images.ndim == 4 and shape[1] == in_chans:
        return
    if images.ndim == 4 and shape[-1] == in_chans:
        fix = "it looks channels-last (N×H×W×C); use x.permute(0, 3, 1, 2) (numpy: x.transpose(0, 3, 1, 2))"
    elif images.ndim == 3:
        fix = "add the channel axis with x[:, None]"
    else:
        fix = "pass uint8 0..255 images instead to have finetunekit preprocess them"
    raise DataError(
        f"{what} has float images of shape {shape}; float images are taken as preprocessed and must be "
        f"N×C×H×W with C=in_chans={in_chans}. Fix: {fix}."
    )


def _float_dataset(
    images: torch.Tensor, labels: np.ndarray | None, transform: ImageTransform, what: str
) -> PreprocessedDataset:
    _check_float_shape(images, transform.in_chans, what)
    if transform.policy is not None:
        check_float_augment(transform.policy)
    if images.dtype != torch.float32:
        images = images.float()
    finite = torch.isfinite(images)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise DataError(
            f"{what} contains {bad} NaN or infinite values; expected finite floats. Clean or drop them."
        )
    peak = float(images.abs().max())
    if peak > _UNNORMALIZED_MAX:
        warnings.warn(
            f"{what} is float with values up to {peak:g}, which looks unnormalized (0..255?). Float images "
            "are used as given; pass uint8 images to have them scaled and normalized.",
            UserWarning,
            stacklevel=4,
        )
    else:
        warn_if_misnormalized(images, transform.data_config, transform.in_chans, what)
    return PreprocessedDataset(images, labels, transform)


def image_tensor(x: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """``x`` as a CPU tensor after the checks that need no pass over the data (rank, emptiness)."""
    images = as_cpu_tensor(x)
    if images.ndim < 3 or images.ndim > 4:
        raise DataError(
            f"{what} has shape {tuple(images.shape)} ({images.ndim}-D); expected a batch of images: uint8 "
            "N×H×W×C / N×H×W, or float N×C×H×W. A single image needs a batch axis: x[None]."
        )
    shape = tuple(images.shape)
    if images.ndim == 3 and shape[-1] in _CHANNEL_COUNTS and shape[1] > 4 * shape[-1]:
        raise DataError(
            f"{what} has shape {shape}, which looks like one H×W×C image, not a batch; expected N×H×W×C "
            "(or N×H×W grayscale). A single image needs a batch axis: x[None]."
        )
    if len(images) == 0:
        raise DataError(f"{what} is empty (shape {tuple(images.shape)}); expected at least one image.")
    return images


def array_dataset(
    images: torch.Tensor, labels: np.ndarray | None, transform: ImageTransform, what: str
) -> TransformedDataset:
    """Dispatch on dtype: uint8 -> preprocessed by us, float -> taken as preprocessed, else an error."""
    if images.dtype == torch.uint8:
        return _uint8_dataset(images, labels, transform, what)
    if images.is_floating_point():
        return _float_dataset(images, labels, transform, what)
    low, high = int(images.min()), int(images.max())
    in_range = low >= 0 and high <= 255
    fix = "x.astype(np.uint8)" if in_range else "scale them to 0..255 and use x.astype(np.uint8)"
    raise DataError(
        f"{what} has dtype {str(images.dtype).replace('torch.', '')} with values {low}..{high}; expected "
        f"uint8 images (0..255) or float32 N×C×H×W already normalized. Fix: {fix}."
    )
