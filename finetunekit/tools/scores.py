"""Transferability scores of frozen features: LogME, kNN accuracy and a linear probe.

All three take features ``(N, D)`` and integer labels ``(N,)`` and return "higher is better". They use
numpy and torch only (no scikit-learn at runtime), so ranking backbones needs no extra dependency.

* LogME (You et al., ICML 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning"): the log marginal likelihood (evidence) of a Bayesian linear model from the features to each
  one-hot label column, maximized over its prior precision ``alpha`` and noise precision ``beta`` with
  MacKay's fixed-point updates computed through one SVD; averaged over classes and divided by N. No
  training, no hyperparameters, so it is the default.
* kNN accuracy: cross-validated k-nearest-neighbour accuracy on L2-normalized features (cosine).
* Linear probe: cross-validated accuracy of an L2-regularized multinomial logistic regression on
  standardized features (full-batch L-BFGS), the closest quick proxy for a frozen-backbone fine-tune.
"""

from __future__ import annotations

import numpy as np
import torch

from finetunekit.errors import ConfigError

LOG_2PI = float(np.log(2 * np.pi))


def _check(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64).reshape(-1)
    if f.ndim != 2 or f.shape[0] != y.shape[0] or f.shape[0] < 2:
        raise ConfigError(
            f"features of shape {f.shape} and labels of shape {y.shape}: expected (N, D) features and N "
            "labels with N >= 2; pass one label per image"
        )
    return f, y


def log_evidence(
    sigma: np.ndarray, x2: np.ndarray, res_x2: float, n: int, d: int, alpha: float, beta: float
) -> tuple[float, float, float]:
    """Log evidence of Bayesian linear regression in SVD coordinates, and the (m2, res2) it used.

    ``sigma`` are the D eigenvalues of FᵀF (zeros included), ``x2`` the squared projections of the target
    on the left singular vectors, ``res_x2`` the target's energy outside their span. Equals
    ``log N(y | 0, I/beta + F Fᵀ/alpha)`` (tested against that formula).
    """
    t = alpha / beta
    m2 = float((sigma * x2 / (t + sigma) ** 2).sum())
    res2 = float((x2 * (t / (t + sigma)) ** 2).sum() + res_x2)
    evidence = (
        d / 2.0 * np.log(alpha)
        + n / 2.0 * np.log(beta)
        - 0.5 * np.sum(np.log(alpha + beta * sigma))
        - beta / 2.0 * res2
        - alpha / 2.0 * m2
        - n / 2.0 * LOG_2PI
    )
    return float(evidence), m2, res2


def _evidence_one(
    sigma: np.ndarray, x2: np.ndarray, res_x2: float, n: int, d: int, max_iter: int
) -> tuple[float, float, float]:
    """MacKay fixed point for (alpha, beta), as in the LogME paper's Algorithm 2; returns evidence/N."""
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        t = alpha / beta
        gamma = float((sigma / (sigma + t)).sum())
        _, m2, res2 = log_evidence(sigma, x2, res_x2, n, d, alpha, beta)
        alpha = gamma / (m2 + 1e-5)
        beta = (n - gamma) / (res2 + 1e-5)
        if abs(alpha / beta - t) / t <= 1e-3:
            break
    evidence, _, _ = log_evidence(sigma, x2, res_x2, n, d, alpha, beta)
    return evidence / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """LogME score (mean per-sample log evidence over one-vs-rest label columns); higher is better.

    Unlike the reference code, the D - rank(F) zero eigenvalues are kept in ``log|A|`` so the value is the
    exact evidence also when N < D (it changes the value, not the usual ranking).
    """
    f, y = _check(features, labels)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = np.zeros(d)
    sigma[: s.shape[0]] = s**2
    scores = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        x = np.zeros(d)
        x[: s.shape[0]] = u.T @ target
        res_x2 = float(target @ target - (x**2).sum())
        scores.append(_evidence_one(sigma, x**2, max(res_x2, 0.0), n, d, max_iter)[0])
    return float(np.mean(scores))


def stratified_folds(labels: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` disjoint test-index sets, each class dealt round-robin after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        fold_of[idx] = (np.arange(len(idx)) + rng.integers(k)) % k
    return [np.flatnonzero(fold_of == i) for i in range(k)]


def _folds(y: np.ndarray, cv: int, seed: int) -> list[np.ndarray]:
    if cv < 2:
        raise ConfigError(f"cv={cv!r}: expected an int >= 2 folds, e.g. cv=5")
    return [t for t in stratified_folds(y, min(cv, len(y)), seed) if len(t) and len(t) < len(y)]


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, cv: int = 5, seed: int = 0) -> float:
    """Cross-validated k-nearest-neighbour accuracy with cosine similarity (majority vote)."""
    f, y = _check(features, labels)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n_classes = int(y.max()) + 1
    correct = 0
    tested = 0
    for test in _folds(y, cv, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        sims = f[test] @ f[train].T
        kk = min(k, len(train))
        nearest = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        votes = np.zeros((len(test), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(test)), kk), y[train][nearest].ravel()), 1.0)
        correct += int((votes.argmax(axis=1) == y[test]).sum())
        tested += len(test)
    return correct / max(1, tested)


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float) -> torch.Tensor:
    """Full-batch L-BFGS multinomial logistic regression; returns W with a bias row appended."""
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    w = torch.zeros(xb.shape[1], n_classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + l2 / 2 * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _standardize_and_project(train: np.ndarray, test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardize with training statistics; when D > N, rotate onto the training rows' span. The
    L2-regularized optimum lies in that span, so the probe is unchanged and L-BFGS runs in N dims."""
    mean, std = train.mean(axis=0), train.std(axis=0) + 1e-6
    train, test = (train - mean) / std, (test - mean) / std
    if train.shape[1] > train.shape[0]:
        _, s, vh = np.linalg.svd(train, full_matrices=False)
        basis = vh[s > s[0] * 1e-10].T
        train, test = train @ basis, test @ basis
    return torch.from_numpy(train), torch.from_numpy(test)


def linear_probe_accuracy(
    features: np.ndarray, labels: np.ndarray, cv: int = 5, l2: float = 1e-2, seed: int = 0
) -> float:
    """Cross-validated accuracy of logistic regression on standardized features (held-out folds)."""
    f, y = _check(features, labels)
    n_classes = int(y.max()) + 1
    correct = 0
    tested = 0
    for test in _folds(y, cv, seed):
        train = np.setdiff1d(np.arange(len(y)), test)
        xtr, xte = _standardize_and_project(f[train], f[test])
        w = _fit_logistic(xtr, torch.from_numpy(y[train]), n_classes, l2)
        pred = (torch.cat([xte, torch.ones(len(xte), 1, dtype=xte.dtype)], dim=1) @ w).argmax(dim=1)
        correct += int((pred.numpy() == y[test]).sum())
        tested += len(test)
    return correct / max(1, tested)


SCORERS = {"logme": logme, "knn": knn_accuracy, "linear_probe": linear_probe_accuracy}
