"""WiSE-FT (Wortsman et al., CVPR 2022): interpolate the backbone between pretrained and fine-tuned.

``theta(alpha) = (1 - alpha) * theta_pretrained + alpha * theta_finetuned`` for every backbone tensor
(BatchNorm statistics included); the trained head is kept as is. alpha=1 is the fine-tuned model,
alpha=0 the pretrained backbone under the new head. Intermediate alphas often keep most of the target
accuracy while staying closer to what the backbone knew.

The fine-tuned end is captured the first time ``interpolate`` is called after a ``fit`` (one more CPU
copy of the backbone), so ``interpolate(0.3)`` then ``interpolate(1.0)`` returns exactly to the
fine-tuned weights. A new ``fit`` starts from whatever weights the model holds and becomes the new end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from finetunekit._norms import BATCH_NORMS
from finetunekit.backbones.snapshot import backbone_state, load_backbone_state, mix_states
from finetunekit.errors import ConfigError
from finetunekit.strategies.lora import wise_start

DEFAULT_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(
            f"alpha={alpha!r} is invalid; expected a float in [0, 1] (0 = pretrained backbone, "
            "1 = fine-tuned), e.g. interpolate(0.5)"
        )
    return float(alpha)


def _finetuned_end(tuner: Any) -> dict[str, Any]:
    """The fine-tuned backbone of the last fit, captured on first use after that fit."""
    marker = tuner.history
    if tuner._wise_end is None or tuner._wise_end[0] is not marker:
        tuner._wise_end = (marker, backbone_state(tuner.model, tuner._backbone.head_path))
    state: dict[str, Any] = tuner._wise_end[1]
    return state


def interpolate(tuner: Any, alpha: float, bn_data: Any = None, batch_size: int = 64) -> None:
    """Set the backbone to the WiSE-FT mix at ``alpha``, in place; the head is untouched.

    With ``bn_data`` (images, e.g. the training set) and alpha < 1, BatchNorm running statistics are
    re-estimated for the mixed weights instead of being mixed themselves (see recalibrate_batchnorm).
    """
    alpha = check_alpha(alpha)
    end = _finetuned_end(tuner)
    start = wise_start(tuner._pretrained_state, end)  # LoRA: interpolate the merged change
    load_backbone_state(tuner.model, mix_states(start, end, alpha))
    if bn_data is not None and alpha < 1.0:
        recalibrate_batchnorm(tuner, bn_data, batch_size)
    tuner._wise_alpha = alpha


@torch.no_grad()
def recalibrate_batchnorm(tuner: Any, x: Any, batch_size: int = 64) -> int:
    """Re-estimate every BatchNorm's running statistics on images ``x`` for the current weights.

    Averaging weights of two networks does not average their activation statistics, so mixed BN
    statistics mismatch the mixed weights (the reason SWA ends with ``update_bn``, Izmailov et al. 2018).
    One pass in eval mode with only the BN layers in train mode and a cumulative average (momentum None),
    so dropout and stochastic depth stay off. Returns the number of BN layers updated.
    """
    from finetunekit.data import make_loader

    norms: list[Any] = [m for m in tuner.model.modules() if isinstance(m, BATCH_NORMS)]
    if not norms:
        return 0
    data = tuner._prepare(x, None, augment=False, what="bn_data", require_labels=False)
    loader = make_loader(data, batch_size=batch_size, shuffle=False, seed=None)
    was_training, momenta = tuner.model.training, [m.momentum for m in norms]
    tuner.model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for batch in loader:
            images = batch[0] if isinstance(batch, (list, tuple)) else batch
            tuner.model(images.to(tuner.device))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        tuner.model.train(was_training)
    return len(norms)


@dataclass
class InterpolationSweep:
    """Validation results per alpha, and the alpha the model was left at."""

    alphas: list[float]
    results: list[dict[str, float]]
    metric: str
    left_at: float
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def accuracy(self) -> list[float]:
        return [r[self.metric] for r in self.results]

    tolerance: float = 0.0

    @property
    def best_alpha(self) -> float:
        """The smallest alpha (closest to pretrained) whose metric is within ``tolerance`` of the best."""
        scores = self.accuracy
        best = max(scores)
        return min(a for a, s in zip(self.alphas, scores, strict=True) if s >= best - self.tolerance)

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas, "results": self.results, "metric": self.metric,
                "best_alpha": self.best_alpha, "left_at": self.left_at, **self.extra}  # fmt: skip

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        from finetunekit.tools.plots import plot_interpolation

        return plot_interpolation(self, path=path)

    def __str__(self) -> str:
        keys = list(self.results[0]) if self.results else []
        extra = list(self.extra)
        widths = [max(10, len(k) + 2) for k in [*keys, *extra]]
        lines = [f"{'alpha':>6}" + "".join(f"{k:>{w}}" for k, w in zip([*keys, *extra], widths, strict=True))]
        for i, (a, r) in enumerate(zip(self.alphas, self.results, strict=True)):
            cells = [r[k] for k in keys] + [self.extra[k][i] for k in extra]
            lines.append(f"{a:>6.2f}" + "".join(f"{v:>{w}.4f}" for v, w in zip(cells, widths, strict=True)))
        lines.append(f"best alpha {self.best_alpha:g}; model left at alpha {self.left_at:g}")
        return "\n".join(lines)


def _leave_at(leave_at: str | float, best: float) -> float:
    if leave_at == "best":
        return best
    if leave_at == "finetuned":
        return 1.0
    if isinstance(leave_at, str):
        raise ConfigError(f"leave_at={leave_at!r} is unknown; expected 'finetuned', 'best' or an alpha")
    return check_alpha(leave_at)


def sweep_interpolation(
    tuner: Any,
    x: Any,
    y: Any = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    *,
    batch_size: int = 64,
    metric: str = "accuracy",
    leave_at: str | float = "finetuned",
    tolerance: float = 0.0,
    monitor: Any = None,
    bn_data: Any = None,
) -> InterpolationSweep:
    """Evaluate the model at each alpha on validation data; leave it at ``leave_at``: "finetuned"
    (alpha 1, the default: a sweep never silently changes the model), "best", or a number.

    "best" is the smallest alpha within ``tolerance`` of the best metric (e.g. 0.005: give up at most half
    a point of accuracy for a backbone closer to pretrained). ``monitor`` (a RetentionMonitor) adds its
    feature similarity and weight change at each alpha to the result. ``bn_data`` (training images)
    re-estimates BatchNorm statistics at each alpha < 1 (recommended for BatchNorm networks).
    """
    checked = [check_alpha(a) for a in alphas]
    if not checked:
        raise ConfigError("alphas is empty; expected alphas in [0, 1], e.g. alphas=(0, 0.5, 1)")
    results: list[dict[str, float]] = []
    extra: dict[str, list[float]] = {}
    for a in checked:
        interpolate(tuner, a, bn_data=bn_data, batch_size=batch_size)
        results.append(tuner.evaluate(x, y, batch_size=batch_size))
        if monitor is not None:
            for k, v in monitor.measure(tuner).items():
                extra.setdefault(k, []).append(v)
    if metric not in results[0]:
        raise ConfigError(f"metric={metric!r} is not computed; expected one of {sorted(results[0])}")
    sweep = InterpolationSweep(checked, results, metric, 1.0, extra, tolerance=float(tolerance))
    target = _leave_at(leave_at, sweep.best_alpha)
    interpolate(tuner, target, bn_data=bn_data, batch_size=batch_size)
    sweep.left_at = float(target)
    return sweep
