"""The per-image pipeline: any image -> uint8 C×H×W -> (augment | resize) -> normalized float32.

Images are kept as uint8 until the last moment: that is 4x less memory than float32, and resizing or
cropping uint8 is what torchvision's fast paths are built for. Normalization is the final step, done
as one fused multiply-add with constants prepared once.

torchvision is imported lazily (it costs seconds), so ``import finetunekit`` stays fast.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from finetunekit.backbones.base import DataConfig
from finetunekit.data.augment import (
    as_uint8_image,
    build_augmenter,
    build_eraser,
    check_float_augment,
    resolve_augment,
)
from finetunekit.errors import DataError

logger = logging.getLogger("finetunekit")

# ITU-R 601 luma weights, the same PIL uses for mode "L", so arrays and files agree.
_LUMA = (0.299, 0.587, 0.114)
_CHANNEL_COUNTS = (1, 3, 4)


def channel_stats(values: tuple[float, ...], in_chans: int) -> torch.Tensor:
    """Fit mean/std to ``in_chans``: one channel gets the average (RGB weights summed into one input
    conv), more channels cycle the given values (what timm's ``adapt_input_conv`` does to weights)."""
    if len(values) == in_chans:
        out = list(values)
    elif in_chans == 1:
        out = [sum(values) / len(values)]
    else:
        out = [values[i % len(values)] for i in range(in_chans)]
    return torch.tensor(out, dtype=torch.float32).view(in_chans, 1, 1)


def adapt_channels(images: torch.Tensor, in_chans: int, what: str) -> torch.Tensor:
    """Make uint8 N×C×H×W images fit ``in_chans`` channels, or say clearly why they cannot.

    Single-channel images stay single-channel: :meth:`ImageTransform.normalize` broadcasts them to
    ``in_chans``, so grayscale data costs a third of the memory of repeating it up front.
    """
    channels = images.shape[1]
    if channels in (in_chans, 1):
        return images
    if channels == 3 and in_chans == 1:
        weights = torch.tensor(_LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        luma = (images.float() * weights).sum(1, keepdim=True)
        return luma.round_().clamp_(0, 255).to(torch.uint8)
    fix = "drop the alpha channel with x[..., :3]" if channels == 4 else f"convert to {in_chans} channels"
    raise DataError(
        f"{what} has {channels}-channel images but the model takes in_chans={in_chans}; {fix}, "
        f"or build the FineTuner with in_chans={channels}."
    )


class ImageTransform:
    """Turns uint8 C×H×W images into model inputs with the backbone's own preprocessing.

    ``augment`` is any value :func:`finetunekit.data.augment.resolve_augment` takes (True: the light
    default below; presets, timm strings, user transforms); the resize and normalization always follow it.
    Training draws RandomResizedCrop(scale=(0.35, 1)) and a horizontal flip from torch's RNG only, so
    ``torch.manual_seed`` (or the loader generator, which seeds each worker) makes it reproducible.
    Without augmentation the whole image is resized to the input size: ``crop_pct`` is deliberately
    not applied, since Keras-style arrays are framed images whose border a centre crop would cut off,
    and training crops see the whole image too.
    """

    def __init__(self, data_config: DataConfig, in_chans: int, augment: Any) -> None:
        self.data_config = data_config
        self.in_chans = in_chans
        self.policy = resolve_augment(augment)  # finetunekit.data.augment: presets, timm strings, transforms
        self.augment = self.policy is not None
        self.size = (int(data_config.input_size[1]), int(data_config.input_size[2]))
        std = channel_stats(tuple(data_config.std), in_chans)
        mean = channel_stats(tuple(data_config.mean), in_chans)
        self._gain = 1.0 / (255.0 * std)
        self._offset = -mean / std
        self._augmenter: Any = None
        self._eraser: Any = None
        self._float_augmenters: dict[tuple[int, int], Any] = {}  # by image size, built on first use

    def with_augment(self, augment: Any) -> ImageTransform:
        """A twin sharing the config, e.g. the never-augmenting transform of a validation split."""
        return ImageTransform(
            self.data_config, self.in_chans, (self.policy or True) if augment is True else augment
        )

    def _interpolation(self) -> Any:
        from torchvision.transforms.v2 import InterpolationMode

        modes = {"bicubic": InterpolationMode.BICUBIC, "nearest": InterpolationMode.NEAREST}
        return modes.get(self.data_config.interpolation, InterpolationMode.BILINEAR)

    def resize(self, images: torch.Tensor) -> torch.Tensor:
        """Resize uint8 (N×)C×H×W to the input size, antialiased; a no-op when already that size."""
        if tuple(images.shape[-2:]) == self.size:
            return images
        from torchvision.transforms.v2 import functional as F

        resized = F.resize(images, list(self.size), interpolation=self._interpolation(), antialias=True)
        return resized.contiguous()  # uint8 fast paths return channels-last strides; batches index slower

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N×)C×H×W -> float32 ``(x / 255 - mean) / std`` as one multiply-add.

        A 1-channel image broadcasts against the per-channel constants: grayscale repeated to RGB.
        """
        floats = images.float()
        if floats.shape[-3] == self.in_chans:  # in place: one float buffer per batch, not two
            return floats.mul_(self._gain).add_(self._offset)
        return torch.addcmul(self._offset, floats, self._gain)

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        if self._augmenter is None:  # built on first use, also inside DataLoader workers
            assert self.policy is not None
            mean = tuple(self.data_config.mean)
            self._augmenter = build_augmenter(self.policy, self.size, mean, self._interpolation())
            self._eraser = build_eraser(self.policy)
        return as_uint8_image(self._augmenter(image))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """One uint8 C×H×W image -> normalized float32 C×H×W at the input size."""
        image = self.resize(self._augment(image) if self.augment else image)
        out = self.normalize(image)
        return self._eraser(out) if self._eraser is not None else out

    def augment_preprocessed(self, image: torch.Tensor) -> torch.Tensor:
        """Augment an already-normalized float image at its own size (no resize, no normalize)."""
        if self.policy is None:
            return image
        check_float_augment(self.policy)  # only the light crop and flip: no colour ops on normalized floats
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if size not in self._float_augmenters:
            from torchvision.transforms.v2 import InterpolationMode

            # the same crop-and-flip builder as uint8 images (one place reads crop_scale and flip);
            # bilinear, as float inputs have always been resampled
            self._float_augmenters[size] = build_augmenter(
                self.policy, size, tuple(self.data_config.mean), InterpolationMode.BILINEAR
            )
        return self._float_augmenters[size](image)


def to_chw_uint8(image: Any, in_chans: int, what: str) -> torch.Tensor | None:
    """One image of a Dataset as uint8 C×H×W with ``in_chans`` channels.

    Returns None for float images, which are taken as preprocessed. PIL images are converted by PIL
    itself (palette, alpha, 16-bit and CMYK files all become RGB or L), as torchvision's loaders do.
    """
    tensor = _pil_to_tensor(image, in_chans)
    if tensor is None:
        tensor = torch.as_tensor(np.asarray(image)) if isinstance(image, np.ndarray) else image
        if not isinstance(tensor, torch.Tensor):
            raise DataError(
                f"{what} yielded an image of type {type(image).__name__}; expected a PIL image, a numpy "
                "array or a tensor. Convert items to one of those in your Dataset's __getitem__."
            )
        if tensor.is_floating_point():
            return None
        tensor = _sample_to_chw(tensor, channels_last=isinstance(image, np.ndarray), what=what)
    return adapt_channels(tensor.unsqueeze(0), in_chans, what)[0]


def _pil_to_tensor(image: Any, in_chans: int) -> torch.Tensor | None:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with torchvision
        return None
    if not isinstance(image, Image.Image):
        return None
    from finetunekit.data.pixels import to_8bit  # 16-bit scaled, not clipped by convert()

    mode = "L" if in_chans == 1 else "RGB" if in_chans == 3 else "RGBA"
    array = np.asarray(to_8bit(image, "a PIL image").convert(mode))
    array = array[..., None] if array.ndim == 2 else array
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _sample_to_chw(tensor: torch.Tensor, channels_last: bool, what: str) -> torch.Tensor:
    """H×W, H×W×C or C×H×W uint8 -> C×H×W; numpy prefers channels-last, tensors channels-first."""
    if tensor.dtype != torch.uint8:
        raise DataError(
            f"{what} yielded an image of dtype {tensor.dtype}; expected uint8 (0..255) or float32 C×H×W "
            "already normalized. Convert with .astype(np.uint8) / .to(torch.uint8) if values are 0..255."
        )
    if tensor.ndim == 2:
        return tensor.unsqueeze(0)
    if tensor.ndim == 3:
        last, first = tensor.shape[-1] in _CHANNEL_COUNTS, tensor.shape[0] in _CHANNEL_COUNTS
        if last and (channels_last or not first):
            return tensor.permute(2, 0, 1)
        if first:
            return tensor
    raise DataError(
        f"{what} yielded an image of shape {tuple(tensor.shape)}; expected H×W, H×W×C or C×H×W with "
        "C in (1, 3, 4)."
    )
