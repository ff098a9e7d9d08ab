"""Backbone selection: LogME against the closed-form evidence, kNN / linear probe, rank_backbones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import rank_backbones
from finetunekit.errors import ConfigError
from finetunekit.tools.scores import _evidence_one, log_evidence
from finetunekit.tools.selection import knn_accuracy, linear_probe_accuracy, logme, spearman


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """numpy's BLAS would start a thread per core; on a shared 2-core box that thrashes (10x slower)."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with threadpoolctl.threadpool_limits(1):
        yield


def _svd_terms(f: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    d = f.shape[1]
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sigma = np.zeros(d)
    sigma[: len(s)] = s**2
    x = np.zeros(d)
    x[: len(s)] = u.T @ y
    return sigma, x**2, float(y @ y - (x**2).sum())


def _gaussian_logpdf(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """Reference: y ~ N(0, I/beta + F F^T / alpha), the marginal of y = F w + noise."""
    cov = np.eye(len(y)) / beta + f @ f.T / alpha
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (len(y) * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)))


@pytest.mark.parametrize("n,d", [(7, 3), (4, 6)])
def test_log_evidence_equals_gaussian_marginal_likelihood(n: int, d: int) -> None:
    rng = np.random.default_rng(1)
    f, y = rng.normal(size=(n, d)), (rng.random(n) > 0.5).astype(np.float64)
    sigma, x2, res = _svd_terms(f, y)
    for alpha, beta in [(0.5, 2.0), (3.0, 0.7)]:
        ours, _, _ = log_evidence(sigma, x2, res, n, d, alpha, beta)
        assert ours == pytest.approx(_gaussian_logpdf(f, y, alpha, beta), rel=1e-9, abs=1e-9)


def test_fixed_point_reaches_a_maximum_of_the_evidence() -> None:
    rng = np.random.default_rng(2)
    f = rng.normal(size=(40, 5))
    y = (f[:, 0] + 0.3 * rng.normal(size=40) > 0).astype(np.float64)
    sigma, x2, res = _svd_terms(f, y)
    ev, alpha, beta = _evidence_one(sigma, x2, res, 40, 5, max_iter=200)
    for da, db in [(1.2, 1), (1 / 1.2, 1), (1, 1.2), (1, 1 / 1.2)]:
        assert log_evidence(sigma, x2, res, 40, 5, alpha * da, beta * db)[0] / 40 < ev + 1e-6


def _features(separable: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(120) % 4
    f = rng.normal(size=(120, 16))
    if separable:
        f[np.arange(120), y] += 4.0
    return f, y


def test_scores_prefer_separable_features() -> None:
    (fs, y), (fr, _) = _features(True), _features(False)
    assert logme(fs, y) > logme(fr, y) + 0.1
    assert knn_accuracy(fs, y) > 0.9 and knn_accuracy(fr, y) < 0.5
    assert linear_probe_accuracy(fs, y) > 0.9 and linear_probe_accuracy(fr, y) < 0.5


def test_scores_reject_mismatched_shapes() -> None:
    with pytest.raises(ConfigError, match="one label per image"):
        logme(np.zeros((5, 3)), np.zeros(4))
    with pytest.raises(ConfigError, match="cv=1"):
        knn_accuracy(*_features(True), cv=1)


def test_spearman_matches_known_values() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)


FORWARDS = [0]


class CountingNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        FORWARDS[0] += 1
        return super().forward(x)


class BlindNet(CountingNet):
    """Same architecture, but its features ignore the image: a candidate that must rank last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.zeros_like(x) + torch.randn_like(x))


def test_rank_backbones_sorts_rows_and_extracts_features_once_per_candidate() -> None:
    x, y = make_images(90, 3, 16)
    torch.manual_seed(0)
    good, blind = CountingNet(), BlindNet()
    FORWARDS[0] = 0
    cache: dict = {}
    ranking = rank_backbones([blind, good], x, y, method=["logme", "knn", "linear_probe"],
                             names=["blind", "good"], batch_size=32, cache=cache)  # fmt: skip
    assert FORWARDS[0] == 2 * 3  # 90 images in 3 batches, once per candidate, for three methods
    assert ranking.names == ["good", "blind"]
    assert ranking.rows[0].scores["knn"] > ranking.rows[1].scores["knn"]
    assert ranking.rows[0].feature_dim == 16 and ranking.rows[0].extract_seconds >= 0
    again = rank_backbones([blind, good], x, y, method="knn", names=["blind", "good"], cache=cache)
    assert FORWARDS[0] == 6 and again.names == ["good", "blind"]
    assert "good" in str(ranking) and ranking.to_dict()["rows"][0]["name"] == "good"
    assert ranking.correlation({"good": 0.9, "blind": 0.1}) == pytest.approx(1.0)


def test_rank_backbones_rejects_unknown_method_and_candidate() -> None:
    x, y = make_images(30, 3, 16)
    with pytest.raises(ConfigError, match="'lgome' is unknown"):
        rank_backbones([TinyNet()], x, y, method="lgome")
    with pytest.raises(ConfigError, match="not understood"):
        rank_backbones([42], x, y)
