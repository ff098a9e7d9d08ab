"""``ft.learning_curve``: fine-tune fresh copies on growing, stratified fractions of the training data.

If validation accuracy is still climbing at the full fraction, more data will help; if it flattened
early while the train/validation gap is large, regularization (L2-SP, mixup, a frozen backbone) is the
better lever. Every point starts from the same state: the pretrained backbone snapshot and a head
re-initialized with the same seed, compiled like the original. Subsets are nested (each fraction
contains the smaller ones) and stratified, so the curve measures data, not which samples were drawn.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from finetunekit.backbones.snapshot import load_backbone_state
from finetunekit.errors import ConfigError, DataError


@dataclass
class LearningCurve:
    fractions: list[float]
    n_train: list[int]
    val_accuracy: list[float]
    train_accuracy: list[float]
    seconds: list[float]
    label: str = ""
    histories: list[dict[str, list[float]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "fractions": self.fractions, "n_train": self.n_train,
                "val_accuracy": self.val_accuracy, "train_accuracy": self.train_accuracy,
                "seconds": self.seconds}  # fmt: skip

    def plot(self, path: str | os.PathLike[str] | None = None, others: Sequence[LearningCurve] = ()) -> Any:
        from finetunekit.tools.plots import plot_learning_curve

        return plot_learning_curve([self, *others], path=path)

    def __str__(self) -> str:
        lines = [f"{'fraction':>8} {'n_train':>8} {'val_acc':>8} {'train_acc':>9} {'time':>7}"]
        for row in zip(self.fractions, self.n_train, self.val_accuracy, self.train_accuracy, self.seconds,
                       strict=True):  # fmt: skip
            lines.append("{:>8.2f} {:>8d} {:>8.4f} {:>9.4f} {:>6.1f}s".format(*row))
        return "\n".join(lines)


def nested_stratified_indices(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """For each fraction, the first ``ceil(fraction * n_c)`` of a seeded per-class permutation (>= 1)."""
    rng = np.random.default_rng(seed)
    orders = {c: rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)}
    out = []
    for f in fractions:
        take = [o[: max(1, int(np.ceil(f * len(o) - 1e-9)))] for o in orders.values()]
        out.append(np.sort(np.concatenate(take)))
    return out


def _check_fractions(fractions: Sequence[float]) -> list[float]:
    fr = [float(f) for f in fractions]
    if not fr or any(not 0 < f <= 1 for f in fr):
        raise ConfigError(
            f"fractions={list(fractions)!r} is invalid; expected fractions in (0, 1], "
            "e.g. [0.1, 0.25, 0.5, 1.0]"
        )
    return sorted(fr)


def fresh_copy(tuner: Any, seed: int) -> Any:
    """A deep copy of ``tuner`` back at its starting point: pretrained backbone, new head, same compile."""
    from finetunekit.backbones import init_head

    fresh = copy.deepcopy(tuner)
    load_backbone_state(fresh.model, fresh._pretrained_state)
    torch.manual_seed(seed)
    with torch.no_grad():
        init_head(fresh._backbone)
    fresh.history, fresh._wise_end, fresh._wise_alpha = None, None, None
    fresh.compile(**tuner._compile_kwargs)
    return fresh


def learning_curve(
    tuner: Any,
    x: Any,
    y: Any,
    fractions: Sequence[float] = (0.1, 0.25, 0.5, 1.0),
    *,
    validation_data: Any,
    epochs: int = 3,
    batch_size: int = 32,
    seed: int = 0,
    label: str = "",
    **fit_kwargs: Any,
) -> LearningCurve:
    """Validation accuracy after fine-tuning a fresh copy on each fraction of ``(x, y)`` (arrays)."""
    if validation_data is None:
        raise ConfigError("learning_curve needs validation_data=(x_val, y_val): the curve is measured on it")
    if y is None or not hasattr(x, "__getitem__") or not hasattr(x, "shape"):
        raise DataError(
            "learning_curve takes image arrays or tensors x with labels y (it indexes subsets); "
            f"got x of type {type(x).__name__}. Fix: pass numpy arrays, e.g. x[N,H,W,C] uint8 and y[N]"
        )
    fr = _check_fractions(fractions)
    if getattr(tuner, "_compile_kwargs", None) is None:
        tuner.compile()
    labels = np.asarray(y)
    curve = LearningCurve([], [], [], [], [], label=label or tuner.spec)
    for f, idx in zip(fr, nested_stratified_indices(labels, fr, seed), strict=True):
        fresh = fresh_copy(tuner, seed)
        start = time.perf_counter()
        hist = fresh.fit(x[idx], labels[idx], batch_size=batch_size, epochs=epochs,
                         validation_data=validation_data, verbose=0, **fit_kwargs)  # fmt: skip
        curve.seconds.append(time.perf_counter() - start)
        curve.fractions.append(f)
        curve.n_train.append(len(idx))
        curve.val_accuracy.append(float(hist.history["val_accuracy"][-1]))
        curve.train_accuracy.append(float(hist.history["accuracy"][-1]))
        curve.histories.append(dict(hist.history))
        del fresh
    return curve
