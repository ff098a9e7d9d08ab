"""One entry point for every form of data ``fit``/``evaluate``/``predict`` take (Keras-style).

Everything that can be checked without a pass over the images is checked here, so bad input fails
before the first optimizer step with a message that says how to fix it (DESIGN decision 7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from finetunekit.backbones.base import DataConfig
from finetunekit.data.arrays import array_dataset, image_tensor
from finetunekit.data.datasets import NO_LABEL, FolderDataset, WrappedDataset, convert_image, split_item
from finetunekit.data.folders import scan_folder
from finetunekit.data.labels import dataset_targets, label_name, validate_labels
from finetunekit.data.transforms import ImageTransform
from finetunekit.errors import DataError, DataTypeError

ACCEPTED = (
    "numpy arrays or tensors of uint8 images (N×H×W×C or N×H×W), float tensors N×C×H×W (preprocessed), "
    "a torch Dataset of (image, label), a DataLoader, a folder path of class subfolders, or a tuple (x, y)"
)


@dataclass
class PreparedData:
    """What the tuner needs to build loaders and to reason about the data without iterating it."""

    dataset: Dataset[Any] | None  # None only when the user passed a DataLoader
    loader: DataLoader[Any] | None  # the user's own DataLoader, used as is
    labels: np.ndarray | None  # int64, when known without decoding images
    class_names: list[str] | None  # from folder names (or a dataset's ``classes``)
    num_samples: int | None


def prepare_data(
    x: Any,
    y: Any = None,
    *,
    data_config: DataConfig,
    in_chans: int,
    augment: bool,
    require_labels: bool,
    num_classes: int | None = None,
    what: str = "x",
) -> PreparedData:
    """Turn user data into a :class:`PreparedData` whose dataset yields normalized (image, int64 label).

    ``require_labels`` is True for fit/evaluate: data that cannot carry labels is an error here rather
    than a confusing loss failure later. Unlabelled images yield label -1.
    """
    if isinstance(x, tuple) and len(x) == 2 and y is None:  # validation_data=(x_val, y_val)
        x, y = x
    transform = ImageTransform(data_config, in_chans, augment)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return _from_arrays(x, y, transform, require_labels, num_classes, what)
    if isinstance(x, list):
        raise DataTypeError(
            f"{what} is a list of {len(x)} items; expected {ACCEPTED}. For a list of equally sized images "
            "use np.stack(images); for images of different sizes, a folder or a Dataset."
        )
    _reject_labels(x, y, what)
    if isinstance(x, DataLoader):
        return PreparedData(dataset=None, loader=x, labels=None, class_names=None, num_samples=_loader_len(x))
    if isinstance(x, (str, os.PathLike)):
        files, labels, names = scan_folder(x, num_classes, what)  # x may be an ImageFolder (its policy)
        return PreparedData(FolderDataset(files, labels, transform), None, labels, names, len(files))
    if isinstance(x, Dataset):
        return _from_dataset(x, transform, require_labels, num_classes, what)
    raise DataTypeError(
        f"{what} is a {type(x).__module__}.{type(x).__qualname__}; expected {ACCEPTED}. "
        "For a list of equally sized images use np.stack(images)."
    )


def _reject_labels(x: Any, y: Any, what: str) -> None:
    if y is not None:
        raise DataError(
            f"{label_name(what)} was given, but {what} is a {type(x).__name__}, which carries its own "
            "labels; pass y=None (labels come from the dataset items, the loader batches or the folder "
            "names)."
        )


def _from_arrays(
    x: np.ndarray | torch.Tensor,
    y: Any,
    transform: ImageTransform,
    require_labels: bool,
    num_classes: int | None,
    what: str,
) -> PreparedData:
    images = image_tensor(x, what)
    if y is None and require_labels:
        raise DataError(
            f"{what} is an array of images without labels; training and evaluation need one class index per "
            f"image. Pass the labels as y (e.g. fit(x, y)) or validation_data=(x_val, y_val)."
        )
    labels = None if y is None else validate_labels(y, len(images), num_classes, what)
    dataset = array_dataset(images, labels, transform, what)
    return PreparedData(dataset, None, labels, None, len(images))


def _from_dataset(
    dataset: Dataset[Any], transform: ImageTransform, require_labels: bool, num_classes: int | None, what: str
) -> PreparedData:
    """Wrap a user's Dataset lazily; its first item is converted now so type errors surface early."""
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise DataTypeError(
            f"{what} is an iterable Dataset without random access ({type(dataset).__name__}); wrap it in a "
            "DataLoader that yields (images, labels) batches and pass the DataLoader instead."
        )
    size = len(dataset)
    if size == 0:
        raise DataError(f"{what} is an empty Dataset ({type(dataset).__name__}); expected at least one item.")
    image, label = split_item(dataset[0], 0, what)
    if require_labels and label == NO_LABEL:
        raise DataError(
            f"{what}[0] is a bare image without a label; training and evaluation need (image, label) items. "
            "Return (image, int(label)) from your Dataset's __getitem__."
        )
    convert_image(image, transform.with_augment(False), f"{what}[0]")  # no RNG draw
    classes = getattr(dataset, "classes", None)
    names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    labels = dataset_targets(dataset, num_classes, what)
    return PreparedData(WrappedDataset(dataset, transform, num_classes, what), None, labels, names, size)


def _loader_len(loader: DataLoader[Any]) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
