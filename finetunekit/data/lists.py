"""Images that are not one array: a list of PIL images or of arrays of different sizes, an
IterableDataset of (image, label) items, and a generator of (images, labels) batches (Keras).

Each image goes through the same conversion as a Dataset item (:func:`convert_image`), so every one is
resized and normalized with the backbone's preprocessing whatever its own size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from finetunekit.data.datasets import (
    NO_LABEL,
    Sample,
    TransformedDataset,
    convert_image,
    is_no_label,
    split_item,
)
from finetunekit.data.labels import check_label_range
from finetunekit.data.targets import item_target
from finetunekit.data.transforms import ImageTransform
from finetunekit.tasks import CLASSIFICATION


class ImageListDataset(TransformedDataset):
    """A Python list of single images (PIL, H×W×C / H×W uint8 arrays, C×H×W tensors), any sizes."""

    def __init__(self, images: list[Any], labels: np.ndarray | None, transform: ImageTransform, what: str):
        self.images = images
        self.labels = labels
        self.transform = transform
        self.what = what

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Sample:
        image = convert_image(self.images[index], self.transform, f"{self.what}[{index}]")
        if self.labels is None:
            return image, torch.tensor(NO_LABEL)
        return image, torch.as_tensor(self.labels[index])


def _target(label: Any, num_classes: int | None, task: str, where: str) -> torch.Tensor:
    if is_no_label(label):
        return torch.tensor(NO_LABEL)
    target = item_target(label, num_classes, task, where)
    if target is not None:
        return target
    check_label_range(np.array([int(label)]), num_classes, f"the label of {where}")
    return torch.tensor(int(label))


class ItemStream(IterableDataset[Sample]):
    """A user's IterableDataset (or re-iterable) of (image, label) items, converted one at a time.
    It has no length: fit needs ``steps_per_epoch`` for it."""

    def __init__(
        self,
        source: Iterable[Any],
        transform: ImageTransform,
        num_classes: int | None,
        what: str,
        task: str = CLASSIFICATION,
    ) -> None:
        self.source, self.transform, self.num_classes, self.what, self.task = (
            source, transform, num_classes, what, task,
        )  # fmt: skip

    def __iter__(self) -> Iterator[Sample]:
        for i, item in enumerate(self.source):
            image, label = split_item(item, i, self.what, self.task)
            where = f"{self.what} item {i}"
            yield (
                convert_image(image, self.transform, where),
                _target(label, self.num_classes, self.task, where),
            )


class BatchStream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    """A generator function (called anew every epoch) or a one-shot iterator of (images, labels)
    batches, as Keras' ``fit(generator, steps_per_epoch=...)`` takes; images are converted per image."""

    def __init__(
        self,
        source: Callable[[], Iterable[Any]] | Iterator[Any],
        transform: ImageTransform,
        num_classes: int | None,
        what: str,
        task: str = CLASSIFICATION,
    ) -> None:
        self.source, self.transform, self.num_classes, self.what, self.task = (
            source, transform, num_classes, what, task,
        )  # fmt: skip

    def _batches(self) -> Iterable[Any]:
        return self.source() if callable(self.source) else self.source

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for b, batch in enumerate(self._batches()):
            images, labels = (batch[0], batch[1]) if isinstance(batch, (tuple, list)) else (batch, None)
            where = f"{self.what} batch {b}"
            x = torch.stack(
                [convert_image(img, self.transform, f"{where}[{i}]") for i, img in enumerate(images)]
            )
            if labels is None:
                yield x, torch.full((len(x),), NO_LABEL)
                continue
            ys = [
                _target(_scalar(y), self.num_classes, self.task, f"{where}[{i}]")
                for i, y in enumerate(labels)
            ]
            yield x, torch.stack(ys)


def _scalar(label: Any) -> Any:
    if isinstance(label, (torch.Tensor, np.ndarray)) and label.ndim == 0:
        return label.item()
    return label
