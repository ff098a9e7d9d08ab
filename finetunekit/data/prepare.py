"""One entry point for every form of data ``fit``/``evaluate``/``predict`` take (Keras-style).

Everything that can be checked without a pass over the images is checked here, so bad input fails
before the first optimizer step with a message that says how to fix it (docs/data.md).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from finetunekit.backbones.base import DataConfig
from finetunekit.data.arrays import array_dataset, image_tensor
from finetunekit.data.datasets import WrappedDataset, convert_image, is_no_label, split_item
from finetunekit.data.files import ImageFiles, is_path_list
from finetunekit.data.labels import dataset_targets, label_name
from finetunekit.data.prepared import PreparedData, Spec
from finetunekit.data.sources import (
    from_files,
    from_image_list,
    from_path,
    from_stream,
    is_frame,
    is_iterable_only,
    is_pil,
    is_stream,
)
from finetunekit.data.targets import validate_targets
from finetunekit.data.transforms import ImageTransform
from finetunekit.errors import DataError, DataTypeError
from finetunekit.tasks import CLASSIFICATION

ACCEPTED = (
    "numpy arrays or tensors of uint8 images (N×H×W×C or N×H×W), float tensors N×C×H×W (preprocessed), "
    "a torch Dataset of (image, label), a DataLoader, a folder path of class subfolders, a list of image "
    "file paths, finetunekit.data.from_csv/from_df(...), a list of PIL images or arrays, or a tuple (x, y)"
)


def prepare_data(
    x: Any,
    y: Any = None,
    *,
    data_config: DataConfig,
    in_chans: int,
    augment: Any,
    require_labels: bool,
    num_classes: int | None = None,
    what: str = "x",
    task: str = CLASSIFICATION,
) -> PreparedData:
    """Turn user data into a :class:`PreparedData` whose dataset yields normalized (image, int64 label).

    ``require_labels`` is True for fit/evaluate: data that cannot carry labels is an error here rather
    than a confusing loss failure later. Unlabelled images yield label -1.
    """
    if isinstance(x, tuple) and len(x) == 2 and y is None:  # validation_data=(x_val, y_val)
        x, y = x
    transform = ImageTransform(data_config, in_chans, augment)
    spec = Spec(transform, require_labels, num_classes, what, task)
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return _from_arrays(x, y, spec)
    if isinstance(x, ImageFiles) or is_path_list(x):
        return from_files(x, y, spec)
    if isinstance(x, (list, tuple)) or is_pil(x):
        return from_image_list(x, y, spec)
    return _from_labelled_source(x, y, spec)


def _from_labelled_source(x: Any, y: Any, spec: Spec) -> PreparedData:
    """The forms that carry their own labels: loaders, folders and files by path, Datasets, streams."""
    what = spec.what
    if is_frame(x):
        raise DataTypeError(
            f"{what} is a pandas DataFrame; pass finetunekit.data.from_df(df, path_col=..., label_col=...) "
            "for a table of image paths, or np.stack(...) its images."
        )
    _reject_labels(x, y, what)
    if isinstance(x, DataLoader):
        return PreparedData(dataset=None, loader=x, labels=None, class_names=None, num_samples=_loader_len(x))
    if isinstance(x, (str, os.PathLike)):
        return from_path(x, spec)  # x may be an ImageFolder (its bad-file policy)
    if isinstance(x, Dataset) and not is_iterable_only(x):
        return _from_dataset(x, spec)
    if isinstance(x, IterableDataset) or is_stream(x):
        return from_stream(x, spec)
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


def _from_arrays(x: np.ndarray | torch.Tensor, y: Any, spec: Spec) -> PreparedData:
    transform, require_labels, num_classes, what = (
        spec.transform,
        spec.require_labels,
        spec.num_classes,
        spec.what,
    )
    images = image_tensor(x, what)
    if y is None and require_labels:
        raise DataError(
            f"{what} is an array of images without labels; training and evaluation need one class index per "
            f"image. Pass the labels as y (e.g. fit(x, y)) or validation_data=(x_val, y_val)."
        )
    labels = None if y is None else validate_targets(y, len(images), num_classes, spec.task, what)
    dataset = array_dataset(images, labels, transform, what)
    return PreparedData(dataset, None, labels, None, len(images))


def _from_dataset(dataset: Dataset[Any], spec: Spec) -> PreparedData:
    """Wrap a user's Dataset lazily; its first item is converted now so type errors surface early."""
    transform, require_labels, num_classes, what = (
        spec.transform,
        spec.require_labels,
        spec.num_classes,
        spec.what,
    )
    size = len(dataset)  # type: ignore[arg-type]
    if size == 0:
        raise DataError(f"{what} is an empty Dataset ({type(dataset).__name__}); expected at least one item.")
    image, label = split_item(dataset[0], 0, what, spec.task)
    if require_labels and is_no_label(label):
        raise DataError(
            f"{what}[0] is a bare image without a label; training and evaluation need (image, label) items. "
            "Return (image, int(label)) from your Dataset's __getitem__."
        )
    convert_image(image, transform.with_augment(False), f"{what}[0]")  # no RNG draw
    classes = getattr(dataset, "classes", None)
    names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) else None
    labels = dataset_targets(dataset, num_classes, what) if spec.task == CLASSIFICATION else None
    wrapped = WrappedDataset(dataset, transform, num_classes, what, spec.task)
    return PreparedData(wrapped, None, labels, names, size)


def _loader_len(loader: DataLoader[Any]) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return None
