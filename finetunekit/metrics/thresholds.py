"""Multi-label decision thresholds tuned on validation data (``FineTuner.tune_thresholds``).

Each class gets the threshold on a fixed grid (0.01 .. 0.99) that maximizes its F1 on the given data;
a single global threshold maximizes micro F1. A fixed grid keeps the choice deterministic and cheap
(one pass over the scores per candidate), and ties go to the threshold closest to 0.5.
"""

from __future__ import annotations

import numpy as np

from finetunekit.errors import ConfigError

GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)


def _f1(pred: np.ndarray, true: np.ndarray, axis: int | None) -> np.ndarray:
    tp = (pred & true).sum(axis=axis)
    denominator = pred.sum(axis=axis) + true.sum(axis=axis)
    return np.divide(2.0 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=denominator > 0)


def _pick(scores: np.ndarray) -> int:
    """Index of the best grid point; ties go to the threshold nearest 0.5."""
    best = np.flatnonzero(scores >= scores.max() - 1e-12)
    return int(best[np.argmin(np.abs(GRID[best] - 0.5))])


def tune_thresholds(probs: np.ndarray, targets: np.ndarray, per_class: bool = True) -> np.ndarray | float:
    """Per-class (or one global) thresholds maximizing F1 of ``probs >= threshold`` on 0/1 ``targets``."""
    if probs.shape != targets.shape or probs.ndim != 2:
        raise ConfigError(
            f"tune_thresholds needs (N, C) scores and multi-hot targets of the same shape; got "
            f"{probs.shape} and {targets.shape}."
        )
    true = targets > 0.5
    if not per_class:
        return float(GRID[_pick(np.array([_f1(probs >= t, true, None) for t in GRID]))])
    table = np.stack([_f1(probs >= t, true, 0) for t in GRID])  # (grid, C)
    return np.array([GRID[_pick(table[:, c])] for c in range(probs.shape[1])], dtype=np.float64)


def check_threshold(value: object, num_classes: int) -> float | list[float]:
    """A float in (0, 1) or one per class; what ``FineTuner.threshold`` accepts and saves."""
    array = np.asarray(value, dtype=np.float64)
    if (
        array.ndim > 1
        or (array.ndim == 1 and len(array) != num_classes)
        or not ((array > 0) & (array < 1)).all()
    ):
        raise ConfigError(
            f"threshold={value!r} is invalid; expected a float in (0, 1) or {num_classes} of them "
            "(one per class)."
        )
    return float(array) if array.ndim == 0 else [float(v) for v in array]
