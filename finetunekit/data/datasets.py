"""The Datasets :func:`prepare_data` builds; each yields ``(float32 C×H×W image, int64 label)``.

Every one carries its :class:`ImageTransform` and can be re-made with another (``with_transform``), which
is how a validation split gets the same images without augmentation.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from finetunekit.data.decode_cache import DecodedImages
from finetunekit.data.labels import check_label_range, label_name
from finetunekit.data.targets import item_target
from finetunekit.data.transforms import ImageTransform, to_chw_uint8
from finetunekit.errors import DataError
from finetunekit.tasks import CLASSIFICATION

Sample = tuple[torch.Tensor, torch.Tensor]
NO_LABEL = -1  # what unlabelled images (predict) yield, so batches are always (images, labels) pairs


def is_no_label(label: Any) -> bool:
    """True for the placeholder of an unlabelled item (not for a target array)."""
    return isinstance(label, int) and label == NO_LABEL


def _label_tensor(labels: np.ndarray | torch.Tensor | None, n: int) -> torch.Tensor:
    """int64 class indices, or float32 rows for multi-label / regression targets."""
    if labels is None:
        return torch.full((n,), NO_LABEL, dtype=torch.int64)
    tensor = torch.as_tensor(labels)
    return tensor.float() if tensor.is_floating_point() else tensor.long()


class TransformedDataset(Dataset[Sample]):
    """Shared by our datasets: the transform, and a copy of the dataset with another one."""

    transform: ImageTransform

    def with_transform(self, transform: ImageTransform) -> TransformedDataset:
        twin = copy.copy(self)
        twin.transform = transform
        return twin


class ArrayImageDataset(TransformedDataset):
    """uint8 images held once as an N×C×H×W tensor (at the input size unless augmenting)."""

    def __init__(
        self, images: torch.Tensor, labels: np.ndarray | torch.Tensor | None, transform: ImageTransform
    ) -> None:
        self.images = images
        self.labels = _label_tensor(labels, len(images))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return self.transform(self.images[index]), self.labels[index]

    def select(self, indices: np.ndarray, transform: ImageTransform) -> ArrayImageDataset:
        """A copy of some images for ``transform``; a non-augmenting copy is resized up front once."""
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.images[index]
        if not transform.augment:
            images = torch.cat([transform.resize(c) for c in images.split(1024)])
        return ArrayImageDataset(images, self.labels[index], transform)

    def __getitems__(self, indices: list[int]) -> list[Sample]:
        """Batch fetch (DataLoader and Subset use it): without augmentation one vectorized
        resize + normalize per batch instead of one per image."""
        if self.transform.augment:
            return [self[i] for i in indices]
        index = torch.as_tensor(indices, dtype=torch.int64)
        images = self.transform.normalize(self.transform.resize(self.images[index]))
        return list(zip(images.unbind(0), self.labels[index].unbind(0), strict=True))


class PreprocessedDataset(TransformedDataset):
    """Float N×C×H×W images the user already normalized: passed through bitwise unchanged (augmentation,
    when asked for, crops and flips at their own size)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray | None, transform: ImageTransform) -> None:
        self.images = images
        self.labels = _label_tensor(labels, len(images))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        return self.transform.augment_preprocessed(self.images[index]), self.labels[index]


def convert_image(image: Any, transform: ImageTransform, what: str) -> torch.Tensor:
    """Any single image (PIL, array, tensor) -> model input; floats count as preprocessed."""
    uint8 = to_chw_uint8(image, transform.in_chans, what)
    if uint8 is not None:
        return transform(uint8)
    tensor = torch.as_tensor(image, dtype=torch.float32)
    if tensor.ndim != 3 or tensor.shape[0] != transform.in_chans:
        raise DataError(
            f"{what} yielded a float image of shape {tuple(tensor.shape)}; float images are taken as "
            f"preprocessed and must be C×H×W with C={transform.in_chans}. Return uint8 images to have "
            "finetunekit resize and normalize them, or permute channels-last images with .permute(2, 0, 1)."
        )
    return transform.augment_preprocessed(tensor)


def split_item(item: Any, index: int, what: str, task: str = CLASSIFICATION) -> tuple[Any, Any]:
    """(image, label) from a Dataset item; a bare image gets NO_LABEL. Non-classification targets are
    returned as given (checked by :func:`finetunekit.data.targets.item_target`)."""
    if not isinstance(item, (tuple, list)):
        return item, NO_LABEL
    if len(item) < 2:
        raise DataError(
            f"{what}[{index}] is a {type(item).__name__} of length {len(item)}; expected (image, label)."
        )
    label = item[1]
    if task != CLASSIFICATION:
        return item[0], label
    if isinstance(label, torch.Tensor) and label.numel() == 1:
        label = label.item()
    if not isinstance(label, (int, np.integer)) or isinstance(label, bool):
        raise DataError(
            f"{what}[{index}] has label {label!r} of type {type(label).__name__}; expected an int class "
            "index. Return int(label) from your Dataset's __getitem__."
        )
    return item[0], int(label)


class WrappedDataset(TransformedDataset):
    """A user's Dataset of (image, label) items, converted lazily one item at a time."""

    def __init__(
        self,
        dataset: Dataset[Any],
        transform: ImageTransform,
        num_classes: int | None,
        what: str,
        task: str = CLASSIFICATION,
    ) -> None:
        self.dataset = dataset
        self.transform = transform
        self.num_classes = num_classes
        self.what = what
        self.task = task

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Sample:
        image, label = split_item(self.dataset[index], index, self.what, self.task)
        image_tensor = convert_image(image, self.transform, f"{self.what}[{index}]")
        if is_no_label(label):
            return image_tensor, torch.tensor(label)
        target = item_target(label, self.num_classes, self.task, f"{self.what}[{index}]")
        if target is None:
            check_label_range(np.array([label]), self.num_classes, f"{label_name(self.what)} (item {index})")
            target = torch.tensor(label)
        return image_tensor, target


class FolderDataset(TransformedDataset):
    """Image files, each decoded once at a reduced size and cached as uint8 (data.decode_cache), then
    transformed on access (in DataLoader workers when there are any)."""

    def __init__(self, files: list[Path], labels: np.ndarray, transform: ImageTransform) -> None:
        self.files = files
        self.labels = _label_tensor(labels, len(files))
        self.transform = transform
        self.images = DecodedImages(files, transform)

    def with_transform(self, transform: ImageTransform) -> TransformedDataset:
        twin = super().with_transform(transform)
        twin.images = self.images.for_transform(transform)  # type: ignore[attr-defined]
        return twin

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        return self.transform(self.images[index]), self.labels[index]
