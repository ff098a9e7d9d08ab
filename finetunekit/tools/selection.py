"""Choosing a backbone before training: transferability scores of frozen features and a ranking."""

from finetunekit.tools.ranking import BackboneRanking, RankingRow, rank_backbones, spearman
from finetunekit.tools.scores import knn_accuracy, linear_probe_accuracy, logme

__all__ = [
    "BackboneRanking",
    "RankingRow",
    "knn_accuracy",
    "linear_probe_accuracy",
    "logme",
    "rank_backbones",
    "spearman",
]
