"""Checking integer class labels, so a bad ``y`` fails before training with a message that fixes it.

A label >= num_classes otherwise surfaces as a CUDA device-side assert deep in the loss, and float or
one-hot labels as a shape error inside ``cross_entropy``; both are far from the user's mistake.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from finetunekit.errors import DataError


def label_name(what: str) -> str:
    """How messages call the labels that go with ``what``: ``y`` for ``x``, else 'labels of <what>'."""
    return "y" if what == "x" else f"the labels of {what}"


def _as_array(y: Any, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        return y.detach().cpu().numpy()
    try:
        return np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{name} could not be read as an array ({exc}); pass a 1-D list or array of ints."
        ) from exc


def _check_shape(labels: np.ndarray, name: str) -> None:
    if labels.ndim == 1:
        return
    shape = labels.shape
    if labels.ndim == 2 and shape[1] == 1:
        fix = "flatten it with y.ravel()"
    elif labels.ndim == 2 and _is_multi_hot(labels):
        fix = (
            "it looks multi-hot (some rows mark several classes); for multi-label data build the "
            "FineTuner with multi_label=True"
        )
    elif labels.ndim == 2:
        fix = (
            "it looks one-hot; pass class indices with y.argmax(1) (or, if an image may have several "
            "classes, build the FineTuner with multi_label=True)"
        )
    else:
        fix = "pass one integer class index per image"
    raise DataError(f"{name} has shape {shape}; expected 1-D class indices of shape (N,). Fix: {fix}.")


def _is_multi_hot(labels: np.ndarray) -> bool:
    """0/1 rows of which at least one is not exactly one-hot."""
    try:
        values = labels.astype(np.float64)
    except (TypeError, ValueError):
        return False
    binary = bool(np.isin(values, (0.0, 1.0)).all())
    return binary and bool((values.sum(1) != 1).any())


def _check_dtype(labels: np.ndarray, name: str) -> None:
    if np.issubdtype(labels.dtype, np.integer):
        return
    if np.issubdtype(labels.dtype, np.floating) or labels.dtype == np.bool_:
        fix = "convert with y.astype(int)"
    else:
        fix = (
            "map class names to indices first, e.g. with sklearn.preprocessing.LabelEncoder; for image "
            "files, finetunekit.data.from_paths(paths, labels) takes class names"
        )
    raise DataError(f"{name} has dtype {labels.dtype}; expected integer class indices. Fix: {fix}.")


def check_label_range(labels: np.ndarray, num_classes: int | None, name: str) -> None:
    """Negative labels and labels >= num_classes name the offending value and index."""
    if labels.size == 0:
        return
    low = int(labels.min())
    if low < 0:
        index = int(np.argmin(labels))
        raise DataError(
            f"{name} contains the negative label {low} (at index {index}); expected class indices "
            "0..num_classes-1. Remove or remap those samples."
        )
    high = int(labels.max())
    if num_classes is not None and high >= num_classes:
        index = int(np.argmax(labels))
        raise DataError(
            f"{name} contains label {high} (at index {index}) but num_classes={num_classes}; labels must "
            f"be 0..{num_classes - 1}. Fix: build the FineTuner with num_classes={high + 1}, or remap labels."
        )


def validate_labels(y: Any, num_samples: int, num_classes: int | None, what: str) -> np.ndarray:
    """``y`` as a checked int64 array of length ``num_samples``."""
    name = label_name(what)
    labels = _as_array(y, name)
    _check_shape(labels, name)
    _check_dtype(labels, name)
    if len(labels) != num_samples:
        raise DataError(
            f"{name} has {len(labels)} labels but {what} has {num_samples} images; expected one label per "
            "image. Check that x and y were sliced the same way."
        )
    check_label_range(labels, num_classes, name)
    return labels.astype(np.int64, copy=False)


def dataset_targets(dataset: Any, num_classes: int | None, what: str) -> np.ndarray | None:
    """Labels a Dataset exposes as ``.targets`` (torchvision convention), or None when it has none
    usable: other datasets keep labels inside their items, which we only see while iterating."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        return validate_labels(targets, len(dataset), num_classes, what)
    except DataError as exc:
        if "num_classes" in str(exc) or "negative" in str(exc):
            raise  # real labels, wrong values: the user must know before training
        return None
