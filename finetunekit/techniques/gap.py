"""The train/validation gap, logged each epoch so overfitting is visible in History and summary.

``gap_<metric> = <metric> - val_<metric>`` and ``gap_loss = val_loss - loss``: both positive when the model
does better on the data it trains on. The training side is the running mean over the epoch (with
augmentation, mixing and dropout on, weights still moving), as in Keras, so a small negative gap early on
is normal; a gap that keeps growing while ``val_`` stalls is overfitting.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def gap_logs(logs: Mapping[str, Any]) -> dict[str, float]:
    """Gap entries for every key that has both a training and a ``val_`` value."""
    out: dict[str, float] = {}
    for key, value in logs.items():
        val = logs.get(f"val_{key}")
        if key.startswith(("val_", "gap_")) or key == "lr" or val is None:
            continue
        out[f"gap_{key}"] = float(val) - float(value) if key == "loss" else float(value) - float(val)
    return out


def gap_line(history: Any) -> str | None:
    """One line for ``summary()``: the last epoch's gaps of the last fit, or None before any fit."""
    record = getattr(history, "history", None) or {}
    gaps = {k: v[-1] for k, v in record.items() if k.startswith("gap_") and v}
    if not gaps:
        return None
    return "last fit, final epoch: " + ", ".join(f"{k}={v:+.4f}" for k, v in sorted(gaps.items()))
