"""Targets for every task, checked once before training (see :mod:`finetunekit.tasks`).

Class indices go through :mod:`finetunekit.data.labels`; multi-label targets become float32 multi-hot
rows (N, num_classes); regression targets float32 (N, num_outputs). Each bad ``y`` raises a
:class:`~finetunekit.errors.DataError` that names it and says how to fix it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from finetunekit.data.labels import label_name, validate_labels
from finetunekit.errors import DataError
from finetunekit.tasks import CLASSIFICATION, MULTI_LABEL


def _ragged(y: Any) -> bool:
    """A list of per-image class lists such as ``[[0, 2], [1], []]``."""
    return (
        isinstance(y, (list, tuple))
        and len(y) > 0
        and all(isinstance(r, (list, tuple, set, frozenset, np.ndarray)) for r in y)
        and len({len(r) for r in y}) > 1
    )


def indices_to_multi_hot(rows: Sequence[Any], num_classes: int, name: str) -> np.ndarray:
    """``[[0, 2], [1]]`` -> multi-hot float32 rows; a class index out of range names the row."""
    out = np.zeros((len(rows), num_classes), dtype=np.float32)
    for i, row in enumerate(rows):
        for c in row:
            if isinstance(c, bool) or not isinstance(c, (int, np.integer)) or not 0 <= int(c) < num_classes:
                raise DataError(
                    f"{name}[{i}] contains {c!r}; expected class indices 0..{num_classes - 1} for "
                    f"num_classes={num_classes}. Fix the row or build the FineTuner with more classes."
                )
            out[i, int(c)] = 1.0
    return out


def _as_float_array(y: Any, name: str) -> np.ndarray:
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    try:
        array = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} could not be read as a float array ({exc}); pass numbers.") from exc
    if not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise DataError(f"{name} contains {bad} NaN or infinite values; expected finite numbers.")
    return array


def multi_hot_targets(y: Any, num_samples: int, num_classes: int, what: str) -> np.ndarray:
    """Multi-hot (N, num_classes) float32 in [0, 1] from 0/1 rows or per-image lists of class indices."""
    name = label_name(what)
    rows = indices_to_multi_hot(y, num_classes, name) if _ragged(y) else _as_float_array(y, name)
    if rows.ndim != 2 or rows.shape[1] != num_classes:
        raise DataError(
            f"{name} has shape {rows.shape}; a multi_label FineTuner expects multi-hot rows of shape "
            f"(N, num_classes={num_classes}), or one list of class indices per image such as [[0, 2], [1]]. "
            "For one class per image, build the FineTuner without multi_label."
        )
    if rows.min() < 0 or rows.max() > 1:
        raise DataError(
            f"{name} has values {rows.min():g}..{rows.max():g}; multi-hot targets must be in [0, 1] "
            "(1 = the class is present)."
        )
    _check_count(len(rows), num_samples, name, what)
    return rows


def regression_targets(y: Any, num_samples: int, num_outputs: int, what: str) -> np.ndarray:
    """(N, num_outputs) float32; (N,) is accepted for one output."""
    name = label_name(what)
    values = _as_float_array(y, name)
    if values.ndim == 1 and num_outputs == 1:
        values = values[:, None]
    if values.ndim != 2 or values.shape[1] != num_outputs:
        raise DataError(
            f"{name} has shape {values.shape}; a regression FineTuner with num_classes={num_outputs} "
            f"outputs expects targets of shape (N, {num_outputs}) (or (N,) for one output). Build it "
            "with num_classes equal to the number of values per image."
        )
    _check_count(len(values), num_samples, name, what)
    return values


def _check_count(n: int, num_samples: int, name: str, what: str) -> None:
    if n != num_samples:
        raise DataError(
            f"{name} has {n} targets but {what} has {num_samples} images; expected one per image. "
            "Check that x and y were sliced the same way."
        )


def validate_targets(y: Any, num_samples: int, num_classes: int | None, task: str, what: str) -> np.ndarray:
    """``y`` checked and stored as the task wants it (int64 indices or float32 rows)."""
    if task == CLASSIFICATION or num_classes is None:
        return validate_labels(y, num_samples, num_classes, what)
    if task == MULTI_LABEL:
        return multi_hot_targets(y, num_samples, num_classes, what)
    return regression_targets(y, num_samples, num_classes, what)


def item_target(label: Any, num_classes: int | None, task: str, where: str) -> torch.Tensor | None:
    """One Dataset item's target as a tensor for multi-label / regression; None for classification
    (class indices are checked by :func:`finetunekit.data.datasets.split_item`)."""
    if task == CLASSIFICATION or num_classes is None:
        return None
    if isinstance(label, torch.Tensor):
        label = label.detach().cpu().numpy()
    if task == MULTI_LABEL and isinstance(label, (list, tuple, set)) and all(
        isinstance(c, (int, np.integer)) for c in label
    ) and (len(label) != num_classes or not set(label) <= {0, 1}):  # fmt: skip
        return torch.from_numpy(indices_to_multi_hot([list(label)], num_classes, where)[0])
    values = np.atleast_1d(np.asarray(label, dtype=np.float32))
    if values.shape != (num_classes,):
        raise DataError(
            f"{where} has a target of shape {values.shape}; task={task!r} with num_classes={num_classes} "
            f"expects {num_classes} values per item (multi-hot for multi_label)."
        )
    return torch.from_numpy(values.copy())


def data_targets(data: Any) -> np.ndarray:
    """Every target of prepared data as an array: known labels, else read from the dataset's items."""
    if data.labels is not None:
        return np.asarray(data.labels)
    if data.dataset is None or data.num_samples is None:
        raise DataError(
            "the targets of a DataLoader or stream cannot be listed; pass arrays, files or a Dataset."
        )
    return np.stack([np.asarray(data.dataset[i][1]) for i in range(data.num_samples)])
