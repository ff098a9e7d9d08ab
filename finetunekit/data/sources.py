"""The data sources beyond arrays and Datasets: paths (a folder of class folders, a flat folder, one
file), lists of files, lists of images, and streams (IterableDatasets, generators).

Each returns a :class:`PreparedData`; :func:`finetunekit.data.prepare.prepare_data` dispatches to them.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset, IterableDataset

from finetunekit.data.datasets import FolderDataset, convert_image
from finetunekit.data.files import ImageFiles, check_files, flat_folder_files, is_image_file
from finetunekit.data.folders import check_image_files, scan_folder
from finetunekit.data.labels import label_name
from finetunekit.data.lists import BatchStream, ImageListDataset, ItemStream
from finetunekit.data.prepared import PreparedData, Spec
from finetunekit.data.targets import indices_to_multi_hot, validate_targets
from finetunekit.errors import DataError, DataTypeError
from finetunekit.tasks import CLASSIFICATION, MULTI_LABEL


def is_pil(x: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow ships with torchvision
        return False
    return isinstance(x, Image.Image)


def is_frame(x: Any) -> bool:
    return type(x).__name__ == "DataFrame" and hasattr(x, "columns")


def is_iterable_only(x: Any) -> bool:
    """A Dataset without random access (an IterableDataset, or no ``__len__``)."""
    return isinstance(x, IterableDataset) or not hasattr(x, "__len__")


def is_stream(x: Any) -> bool:
    """A generator function or an iterator (a generator object), Keras' ``fit(generator)``."""
    return inspect.isgeneratorfunction(x) or isinstance(x, Iterator)


def _labels_needed(spec: Spec) -> DataError:
    return DataError(
        f"{spec.what} has no labels; training and evaluation need them. Pass them as y, use a folder of "
        "class subfolders, or finetunekit.data.from_csv(...)."
    )


def _file_data(
    files: list[Path], labels: np.ndarray | None, names: list[str] | None, spec: Spec
) -> PreparedData:
    if labels is None and spec.require_labels:
        raise _labels_needed(spec)
    dataset = FolderDataset(files, labels, spec.transform)  # type: ignore[arg-type]
    return PreparedData(dataset, None, labels, names, len(files), files=[str(f) for f in files])


def from_path(source: str | os.PathLike[str], spec: Spec) -> PreparedData:
    """One image file or a flat folder (predict), else a folder of class subfolders (``source`` may be
    an :class:`~finetunekit.data.folders.ImageFolder`, whose bad-file policy the scan keeps)."""
    root = Path(source)
    if is_image_file(root):
        check_image_files([root], spec.what)
        return _file_data([root], None, None, spec)
    flat = flat_folder_files(root) if root.is_dir() else []
    if flat and not spec.require_labels:
        check_image_files(flat, spec.what)
        return _file_data(flat, None, None, spec)
    if spec.task != CLASSIFICATION:
        raise DataError(
            f"{spec.what}={str(root)!r} is a folder of class subfolders, which gives one class per image; "
            f"task={spec.task!r} needs targets: use finetunekit.data.from_csv(..., delimiter=...) or pass "
            "a list of paths with y."
        )
    files, labels, names = scan_folder(source, spec.num_classes, spec.what)
    return _file_data(files, labels, names, spec)


def _files_targets(x: ImageFiles, spec: Spec) -> np.ndarray | None:
    if x.labels is None:
        return None
    if x.multi_label and spec.task != MULTI_LABEL:
        raise DataError(
            f"{spec.what} has multi-label labels (a delimiter split them); build the FineTuner with "
            "multi_label=True, or read the table without delimiter= for one class per image."
        )
    n = len(x.class_names or []) if spec.num_classes is None else spec.num_classes
    if x.class_names is not None and spec.num_classes is not None and len(x.class_names) > spec.num_classes:
        raise DataError(
            f"{spec.what} has {len(x.class_names)} classes {x.class_names[:10]} but num_classes="
            f"{spec.num_classes}; build the FineTuner with num_classes={len(x.class_names)}."
        )
    if spec.task == MULTI_LABEL:
        rows = x.labels if x.multi_label else [[c] for c in x.labels]
        return indices_to_multi_hot(rows, n, label_name(spec.what))
    return validate_targets(x.labels, len(x), spec.num_classes, spec.task, spec.what)


def from_files(x: Any, y: Any, spec: Spec) -> PreparedData:
    """:class:`ImageFiles` (from_csv / from_df / from_paths) or a list of paths with optional ``y``."""
    if isinstance(x, ImageFiles):
        if y is not None:
            raise DataError(f"{spec.what} comes with its labels (from_csv/from_df); pass y=None.")
        return _file_data(list(x.paths), _files_targets(x, spec), x.class_names, spec)
    files = check_files(x, spec.what)
    labels = None if y is None else validate_targets(y, len(files), spec.num_classes, spec.task, spec.what)
    return _file_data(files, labels, None, spec)


def from_image_list(x: Any, y: Any, spec: Spec) -> PreparedData:
    """One PIL image, or a list of PIL images / arrays / tensors of any sizes."""
    images = [x] if is_pil(x) else list(x)
    if not images:
        raise DataError(f"{spec.what} is an empty list; expected at least one image.")
    if y is None and spec.require_labels:
        raise _labels_needed(spec)
    for i in (0, len(images) - 1):  # type errors now, not in the middle of an epoch
        convert_image(images[i], spec.transform.with_augment(False), f"{spec.what}[{i}]")
    labels = None if y is None else validate_targets(y, len(images), spec.num_classes, spec.task, spec.what)
    dataset = ImageListDataset(images, labels, spec.transform, spec.what)
    return PreparedData(dataset, None, labels, None, len(images))


def from_stream(x: Any, spec: Spec) -> PreparedData:
    """An IterableDataset of (image, label) items, or a generator of (images, labels) batches. Neither
    has a length: fit needs ``steps_per_epoch``; neither can be shuffled or split by finetunekit."""
    if isinstance(x, Dataset) or (hasattr(x, "__iter__") and not is_stream(x)):
        stream = ItemStream(x, spec.transform, spec.num_classes, spec.what, spec.task)
        return PreparedData(stream, None, None, None, None)
    if not is_stream(x):
        raise DataTypeError(f"{spec.what} of type {type(x).__name__} cannot be read as a stream of images.")
    batches = BatchStream(x, spec.transform, spec.num_classes, spec.what, spec.task)
    return PreparedData(None, DataLoader(batches, batch_size=None), None, None, None)
