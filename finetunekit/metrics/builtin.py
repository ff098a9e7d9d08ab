"""The metrics ``compile(metrics=[...])`` knows by name, per task.

Most are sums over batches (counts per class, ECE bins), kept on the device and summed over DDP
ranks; AUROC and mAP need every score, so they store them and rank them once at ``result()``. Each
matches scikit-learn on the same predictions (tests/metrics/):

- single-label: ``accuracy``, ``topK`` (``top5``, ``top_5``, ``top5_accuracy``), ``precision`` /
  ``recall`` / ``f1`` (macro; ``_macro`` / ``_micro`` suffixes choose), ``balanced_accuracy``,
  ``auroc`` (one-vs-rest macro), ``ece`` (15 equal-width confidence bins).
- multi-label (at the decision threshold): ``accuracy`` (per label, 1 - Hamming loss),
  ``subset_accuracy`` (every label right), ``precision`` / ``recall`` / ``f1`` (macro or micro),
  ``map`` (macro average precision), ``auroc`` (macro).
- regression: ``mae``, ``mse``, ``rmse``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from finetunekit.metrics.ranking import one_vs_rest
from finetunekit.tasks import CLASSIFICATION, MULTI_LABEL, REGRESSION

ECE_BINS = 15
_TOPK = re.compile(r"^top_?(\d+)(_accuracy)?$")


@dataclass(frozen=True)
class Builtin:
    """A named metric: ``kind`` is "sum" (state = per-batch sums) or "store" (scores kept)."""

    kind: str
    what: str  # accuracy, topk, precision, recall, f1, balanced, ece, auroc, map, subset, mae, mse, rmse
    average: str = "macro"
    k: int = 1

    def size(self, num_classes: int) -> int:
        if self.what in ("precision", "recall", "f1", "balanced"):
            return 3 * num_classes
        if self.what == "ece":
            return 3 * ECE_BINS
        return 1 if self.kind == "sum" else 0


_NAMES: dict[str, dict[str, Builtin]] = {
    CLASSIFICATION: {"accuracy": Builtin("sum", "topk", k=1), "acc": Builtin("sum", "topk", k=1),
                     "balanced_accuracy": Builtin("sum", "balanced"), "ece": Builtin("sum", "ece"),
                     "auroc": Builtin("store", "auroc")},
    MULTI_LABEL: {"accuracy": Builtin("sum", "accuracy"), "acc": Builtin("sum", "accuracy"),
                  "subset_accuracy": Builtin("sum", "subset"), "map": Builtin("store", "map"),
                  "auroc": Builtin("store", "auroc")},
    REGRESSION: {"mae": Builtin("sum", "mae"), "mse": Builtin("sum", "mse"), "rmse": Builtin("sum", "rmse")},
}  # fmt: skip
for _task in (CLASSIFICATION, MULTI_LABEL):
    for _what in ("precision", "recall", "f1"):
        _NAMES[_task][_what] = Builtin("sum", _what, "macro")
        for _avg in ("macro", "micro"):
            _NAMES[_task][f"{_what}_{_avg}"] = Builtin("sum", _what, _avg)


def known_names(task: str) -> list[str]:
    extra = ["top5 (any topK)"] if task == CLASSIFICATION else []
    return sorted(_NAMES[task]) + extra


def lookup(name: str, task: str) -> Builtin | None:
    found = _NAMES[task].get(name)
    if found is None and task == CLASSIFICATION:
        match = _TOPK.match(name)
        if match and int(match.group(1)) >= 1:
            return Builtin("sum", "topk", k=int(match.group(1)))
    return found


def _per_class_counts(pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """(tp, predicted, actual) per class from (N, C) 0/1 indicator matrices."""
    return torch.cat([(pred * true).sum(0), pred.sum(0), true.sum(0)]).double()


def batch_sums(
    m: Builtin, scores: torch.Tensor, target: torch.Tensor, threshold: torch.Tensor
) -> torch.Tensor:
    """This batch's contribution to ``m``'s state (``scores``: probabilities or outputs)."""
    if m.what == "topk":
        top = scores.topk(min(m.k, scores.shape[1]), dim=1).indices
        return (top == target.unsqueeze(1)).any(dim=1).sum().double().reshape(1)
    if m.what in ("precision", "recall", "f1", "balanced"):
        if target.is_floating_point():  # multi-label
            pred = (scores >= threshold).double()
            return _per_class_counts(pred, target.double())
        classes = scores.shape[1]
        pred = torch.nn.functional.one_hot(scores.argmax(1), classes).double()
        return _per_class_counts(pred, torch.nn.functional.one_hot(target, classes).double())
    if m.what == "ece":
        return _ece_sums(scores, target)
    if m.what in ("accuracy", "subset"):
        right = (scores >= threshold) == (target > 0.5)
        count = right.all(1).sum() if m.what == "subset" else right.double().mean(1).sum()
        return count.double().reshape(1)
    diff = scores.double() - target.double().reshape(scores.shape)
    per_sample = diff.abs().mean(1) if m.what == "mae" else diff.square().mean(1)
    return per_sample.sum().reshape(1)


def _ece_sums(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    confidence, pred = scores.max(1)
    bins = (confidence * ECE_BINS).long().clamp_(0, ECE_BINS - 1)  # (0, 1/15], ... as torchmetrics
    bins = torch.where(confidence * ECE_BINS == bins.double(), (bins - 1).clamp_(min=0), bins)
    out = torch.zeros(3, ECE_BINS, dtype=torch.float64, device=scores.device)
    out[0].index_add_(0, bins, torch.ones_like(confidence, dtype=torch.float64))
    out[1].index_add_(0, bins, confidence.double())
    out[2].index_add_(0, bins, (pred == target).double())
    return out.reshape(-1)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def _from_counts(m: Builtin, state: np.ndarray, multi_label: bool) -> float:
    tp, predicted, actual = state.reshape(3, -1)
    if m.what == "balanced":
        return float(np.mean(_safe_div(tp, actual)[actual > 0]))
    if m.average == "micro":
        tp, predicted, actual = tp.sum(keepdims=True), predicted.sum(keepdims=True), actual.sum(keepdims=True)
    denominator = {"precision": predicted, "recall": actual, "f1": (predicted + actual) / 2}[m.what]
    values = _safe_div(tp, denominator)
    # sklearn averages multi-class scores over the labels seen in y_true or y_pred; multi-label over all.
    seen = (
        np.ones_like(values, dtype=bool) if multi_label or m.average == "micro" else (predicted + actual) > 0
    )
    return float(values[seen].mean())


def compute(m: Builtin, state: np.ndarray, n: int, multi_label: bool) -> float:
    """The metric's value from its summed state over ``n`` samples."""
    if m.what in ("precision", "recall", "f1", "balanced"):
        return _from_counts(m, state, multi_label)
    if m.what == "ece":
        count, confidence, correct = state.reshape(3, ECE_BINS)
        return float(np.abs(confidence - correct).sum() / max(1.0, count.sum()))
    if m.what == "rmse":
        return float(np.sqrt(state[0] / n))
    return float(state[0] / n)


def compute_stored(m: Builtin, scores: np.ndarray, target: np.ndarray) -> float:
    """AUROC / mAP over every stored score."""
    if target.ndim == 1:  # class indices -> one-hot columns (one-vs-rest)
        if scores.shape[1] == 2:  # sklearn's binary case: the positive class's column only
            return one_vs_rest(target[:, None], scores[:, 1:], "auroc" if m.what == "auroc" else "map")
        target = np.eye(scores.shape[1])[target]
    return one_vs_rest(target, scores, "auroc" if m.what == "auroc" else "map")
