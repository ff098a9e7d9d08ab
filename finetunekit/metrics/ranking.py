"""Exact ranking metrics on stored scores, computed as scikit-learn does (tests compare them):
ROC AUC (``roc_auc_score``) and average precision (``average_precision_score``), per class and
macro-averaged over the classes they are defined for.
"""

from __future__ import annotations

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (``scipy.stats.rankdata``)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2.0  # ranks starts+1..ends
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def binary_auroc(target: np.ndarray, score: np.ndarray) -> float | None:
    """Mann-Whitney U / (n_pos * n_neg): the area under the ROC curve, ties counted half; None when
    the target has only one class."""
    positive = target > 0.5
    n_pos = int(positive.sum())
    n_neg = len(target) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = _average_ranks(score.astype(np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_average_precision(target: np.ndarray, score: np.ndarray) -> float | None:
    """``sum_k (R_k - R_{k-1}) P_k`` over distinct score thresholds; None without positives."""
    positive = target > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None
    order = np.argsort(-score.astype(np.float64), kind="mergesort")
    s, t = score[order], positive[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(t)[last_of_tie]
    predicted = (np.arange(1, len(s) + 1))[last_of_tie]
    precision, recall = tp / predicted, tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def macro(values: list[float | None]) -> float:
    """Mean over the classes where the metric is defined (NaN when it is defined for none)."""
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else float("nan")


def one_vs_rest(targets: np.ndarray, scores: np.ndarray, fn: str) -> float:
    """Macro average of ``fn`` over the columns of (N, C) one-hot / multi-hot targets and scores."""
    metric = binary_auroc if fn == "auroc" else binary_average_precision
    return macro([metric(targets[:, c], scores[:, c]) for c in range(scores.shape[1])])
