"""Metrics for ``compile(metrics=[...])``: names per task (see :mod:`finetunekit.metrics.builtin`) and
torchmetrics ``Metric`` objects, accumulated on the device and reduced over DDP ranks."""

from finetunekit.metrics.builtin import known_names
from finetunekit.metrics.tracker import MetricSet, MetricTracker, check_metrics

__all__ = ["MetricSet", "MetricTracker", "check_metrics", "known_names"]
