"""``rank_backbones``: score candidate backbones on the user's data before fine-tuning any of them.

Each candidate is built once, its pre-logits features extracted once (frozen, eval mode) and cached;
every requested score is then computed from the cached features, so asking for LogME, kNN and a linear
probe costs one forward pass per candidate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import nn

from finetunekit.data.features import extract_features
from finetunekit.errors import ConfigError
from finetunekit.tools.scores import SCORERS

Candidate = Any  # str | nn.Module | FineTuner | tuple[str, weights or None]


@dataclass
class RankingRow:
    name: str
    scores: dict[str, float]
    feature_dim: int
    extract_seconds: float
    score_seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.scores, "feature_dim": self.feature_dim,
                "extract_seconds": self.extract_seconds, "score_seconds": self.score_seconds}  # fmt: skip


@dataclass
class BackboneRanking:
    """Rows sorted best first by ``method`` (the first of the requested methods)."""

    method: str
    rows: list[RankingRow] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [r.name for r in self.rows]

    def scores(self, method: str | None = None) -> dict[str, float]:
        key = method or self.method
        return {r.name: r.scores[key] for r in self.rows}

    def correlation(self, reference: Mapping[str, float], method: str | None = None) -> float:
        """Spearman rank correlation between this ranking's scores and e.g. fine-tuned accuracies."""
        names = [n for n in self.names if n in reference]
        if len(names) < 2:
            raise ConfigError(
                f"reference has {len(names)} of the ranked names {self.names}; expected at least two, "
                "keyed by the names in ranking.names"
            )
        mine = self.scores(method)
        return spearman([mine[n] for n in names], [reference[n] for n in names])

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "rows": [r.to_dict() for r in self.rows]}

    def plot(
        self, path: str | os.PathLike[str] | None = None, reference: Mapping[str, float] | None = None
    ) -> Any:
        """Bars of the scores; with ``reference`` (e.g. fine-tuned accuracies) also score vs reference."""
        from finetunekit.tools.plots import plot_ranking

        return plot_ranking(self, path=path, reference=reference)

    def __str__(self) -> str:
        methods = list(self.rows[0].scores) if self.rows else [self.method]
        head = f"{'rank':>4}  {'backbone':<32}" + "".join(f"{m:>14}" for m in methods)
        lines = [head + f"{'dim':>7}{'extract s':>11}{'score s':>9}"]
        for i, r in enumerate(self.rows, 1):
            cells = "".join(f"{r.scores[m]:>14.4f}" for m in methods)
            lines.append(f"{i:>4}  {r.name:<32}{cells}{r.feature_dim:>7}"
                         f"{r.extract_seconds:>11.2f}{r.score_seconds:>9.2f}")  # fmt: skip
        return "\n".join(lines)


def _ranks(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    order = v.argsort(kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=np.float64)
    for value in np.unique(v):  # ties share their mean rank
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of ranks, ties averaged); NaN if either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra**2).sum() * (rb**2).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def candidate_name(candidate: Candidate) -> str:
    if isinstance(candidate, str):
        return candidate
    if isinstance(candidate, tuple) and len(candidate) == 2 and isinstance(candidate[0], str):
        return candidate[0] if candidate[1] is not None else f"{candidate[0]} (random init)"
    if isinstance(candidate, nn.Module):
        return f"module/{type(candidate).__name__}"
    spec = getattr(candidate, "spec", None)
    if isinstance(spec, str):
        return spec
    raise ConfigError(
        f"candidate {candidate!r} is not understood; expected a backbone name, an nn.Module, a FineTuner "
        "or a (name, weights) pair (weights None = random init), e.g. ('timm/efficientnet_lite0', path)"
    )


def build_candidate(candidate: Candidate, num_classes: int, **kwargs: Any) -> Any:
    """A FineTuner for one candidate; a FineTuner passed in is used as is."""
    from finetunekit.tuner import FineTuner

    candidate_name(candidate)  # validates the form
    if isinstance(candidate, FineTuner):
        return candidate
    if isinstance(candidate, tuple):
        name, weights = candidate
        if weights is None:
            return FineTuner(name, num_classes, pretrained=False, **kwargs)
        return FineTuner(name, num_classes, weights=weights, **kwargs)
    return FineTuner(candidate, num_classes, **kwargs)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return out


def _methods(method: str | Sequence[str]) -> list[str]:
    methods = [method] if isinstance(method, str) else list(method)
    bad = [m for m in methods if m not in SCORERS]
    if not methods or bad:
        raise ConfigError(f"method={method!r} is unknown; expected one or more of {sorted(SCORERS)}")
    return methods


def rank_backbones(
    candidates: Sequence[Candidate],
    x: Any,
    y: Any,
    method: str | Sequence[str] = "logme",
    *,
    names: Sequence[str] | None = None,
    image_size: int | tuple[int, int] | None = None,
    batch_size: int = 64,
    device: str = "auto",
    seed: int | None = 0,
    cache: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    score_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> BackboneRanking:
    """Score each candidate's frozen pre-logits features on ``(x, y)`` and sort them, best first.

    ``method`` is "logme" (default: no training, no hyperparameters), "knn" or "linear_probe", or a list
    of them (all computed from the same features; rows sorted by the first). Candidates are backbone
    names (registry weights), ``(name, weights_path)`` pairs, ``(name, None)`` for a random-init control,
    ``nn.Module`` objects or ready FineTuners. ``seed`` fixes random initializations (a random-init
    control's score depends on its draw). Pass a dict as ``cache`` to reuse features across calls.
    """
    methods = _methods(method)
    labels = np.asarray(y)
    num_classes = int(np.unique(labels).size)
    labels_out = _unique([candidate_name(c) for c in candidates]) if names is None else list(names)
    if len(labels_out) != len(candidates):
        raise ConfigError(f"names has {len(labels_out)} entries for {len(candidates)} candidates")
    cache = {} if cache is None else cache
    rows = []
    for name, candidate in zip(labels_out, candidates, strict=True):
        start = time.perf_counter()
        if name not in cache:
            tuner = build_candidate(
                candidate, max(num_classes, 1), image_size=image_size, device=device, seed=seed
            )
            feats, lab = extract_features(tuner, x, y, batch_size=batch_size)
            cache[name] = (feats, np.asarray(lab if lab is not None else labels))
            del tuner
        extract_s = time.perf_counter() - start
        feats, lab = cache[name]
        start = time.perf_counter()
        kw = score_kwargs or {}
        scores = {m: float(SCORERS[m](feats, lab, **dict(kw.get(m, {})))) for m in methods}  # type: ignore[operator]
        rows.append(RankingRow(name, scores, int(feats.shape[1]), extract_s, time.perf_counter() - start))
    rows.sort(key=lambda r: -r.scores[methods[0]])
    return BackboneRanking(methods[0], rows)
