"""``FineTuner.tune_thresholds``: the multi-label decision thresholds that maximize F1 on validation data.

A tool around the tuner (it predicts, then searches a grid per class: finetunekit.metrics.thresholds), so
the facade keeps a one-line method.
"""

from __future__ import annotations

from typing import Any

from finetunekit.data.targets import data_targets
from finetunekit.errors import ConfigError
from finetunekit.metrics.thresholds import tune_thresholds as best_thresholds
from finetunekit.tasks import MULTI_LABEL


def tune_thresholds(ft: Any, x: Any, y: Any, per_class: bool, batch_size: int) -> Any:
    """One threshold per class (or one global) maximizing F1 of ``ft``'s predictions on ``(x, y)``."""
    if ft.task != MULTI_LABEL:
        raise ConfigError(f"tune_thresholds is for multi_label=True models; this one has task={ft.task!r}")
    targets = data_targets(ft._prepare(x, y, augment=False, what="x"))
    probs = ft.predict(x if y is None else (x, y), batch_size=batch_size)
    return best_thresholds(probs, targets, per_class)
