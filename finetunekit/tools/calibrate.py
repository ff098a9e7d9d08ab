"""Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks").

Fine-tuned networks are over-confident: a 0.99 softmax is right less than 99% of the time. Dividing the
logits by one scalar ``T > 1`` fitted on held-out data fixes most of it without changing any argmax, so
accuracy is untouched. ``T`` is fitted by LBFGS on ``log T`` (keeps ``T > 0`` without constraints) to
minimize the validation negative log-likelihood, the same objective as the paper.

The tools here receive the FineTuner and run its ``eval_model`` directly: they need raw logits, which
``predict`` (probabilities) does not return.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.data.loaders import make_loader
from finetunekit.data.prepare import prepare_data
from finetunekit.errors import ConfigError, DataError

DEFAULT_BINS = 15  # Guo et al. use 15 equal-width confidence bins
MIN_T, MAX_T = 0.01, 100.0


class TemperatureScaled(nn.Module):
    """``model(x) / T``: what ``predict`` runs when the FineTuner has a fitted temperature."""

    def __init__(self, model: nn.Module, temperature: float) -> None:
        super().__init__()
        self.model = model
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


def check_temperature(value: Any) -> float:
    """A temperature read from a config or given by a user: a finite float > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(
            f"temperature={value!r} is invalid; expected a finite float > 0 (1.0 = uncalibrated). "
            "Fix: refit it with ft.calibrate(x_val, y_val)."
        )
    return float(value)


def with_temperature(model: nn.Module, temperature: float) -> nn.Module:
    """The module ``predict`` should run: unchanged at T = 1, else wrapped."""
    return model if temperature == 1.0 else TemperatureScaled(model, temperature)


@dataclass
class Outputs:
    """Raw logits of a data set, its labels (-1 when unlabelled) and image files when it is a folder."""

    logits: np.ndarray
    labels: np.ndarray
    files: list[str] | None
    dataset: Any


@torch.no_grad()
def model_outputs(
    ft: Any, x: Any, y: Any = None, *, batch_size: int = 64, require_labels: bool = True
) -> Outputs:
    """Logits of ``ft.eval_model`` on any data ``predict`` takes, in input order, with no temperature."""
    data = prepare_data(
        x, y, data_config=ft.data_config, in_chans=ft.in_chans, augment=False,
        require_labels=require_labels, num_classes=ft.num_classes, what="x",
    )  # fmt: skip
    loader = make_loader(data, batch_size=batch_size, shuffle=False, seed=0, num_workers=0)
    model = getattr(ft, "eval_model", ft.model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        for batch in loader:
            images, target = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) else (batch, None)
            logits.append(model(images.to(ft.device)).float().cpu())
            labels.append(torch.full((len(images),), -1) if target is None else torch.as_tensor(target))
    finally:
        model.train(was_training)
    if not logits:
        raise DataError("x has no images; expected at least one labelled image")
    files = getattr(data.dataset, "files", None)
    return Outputs(
        torch.cat(logits).numpy(), torch.cat(labels).long().numpy(),
        [str(f) for f in files] if files is not None else None, data.dataset,
    )  # fmt: skip


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64) / temperature, dim=1).numpy()


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS
) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin: count, mean confidence, accuracy (NaN where a bin is empty)."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    # Bins are (lo, hi]; confidence 0 cannot occur for a softmax, so bin 0 starts just above 0.
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(index, weights=confidence, minlength=n_bins) / count
        acc = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"count": count, "confidence": conf, "accuracy": acc}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """ECE = sum over bins of (bin size / N) * |accuracy - mean confidence| (Naeini et al. 2015)."""
    bins = reliability_bins(probs, labels, n_bins)
    filled = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][filled] - bins["confidence"][filled])
    return float((bins["count"][filled] * gaps).sum() / len(labels))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    z = torch.as_tensor(logits, dtype=torch.float64) / temperature
    return float(nn.functional.cross_entropy(z, torch.as_tensor(labels)).item())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 100) -> float:
    """The T minimizing validation NLL of ``softmax(logits / T)``: LBFGS on ``log T`` from T = 1."""
    correct = float((logits.argmax(axis=1) == labels).mean())
    if correct in (0.0, 1.0):  # separable: the NLL keeps falling as T -> 0 (or grows without bound)
        raise DataError(
            f"temperature scaling needs validation images the model gets partly wrong; it gets "
            f"{correct:.0%} of these {len(labels)} right, so the NLL has no minimum. Fix: calibrate on "
            "more, or harder, held-out images (not the training set)."
        )
    z = torch.as_tensor(logits, dtype=torch.float64)
    target = torch.as_tensor(labels, dtype=torch.int64)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(z / log_t.exp(), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.exp().item())
    if not MIN_T <= temperature <= MAX_T:
        raise DataError(
            f"temperature scaling gave T={temperature:.3g}, outside [{MIN_T}, {MAX_T}]: the validation "
            "logits have no useful NLL minimum (all correct, or all wrong). Expected held-out images "
            "the model gets mostly but not all right. Fix: calibrate on more, or other, held-out images."
        )
    return temperature


class CalibrationReport(dict[str, Any]):
    """``{"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "accuracy", "n"}``, plus
    the reliability bins before and after for :meth:`plot`."""

    bins_before: dict[str, np.ndarray]
    bins_after: dict[str, np.ndarray]

    def plot(self, path: str | os.PathLike[str] | None = None) -> Any:
        """Reliability diagrams before and after scaling (accuracy against confidence per bin)."""
        return plot_reliability(self, path)


def calibrate(
    ft: Any, x: Any, y: Any = None, *, batch_size: int = 64, n_bins: int = DEFAULT_BINS
) -> CalibrationReport:
    """Fit ``ft.temperature`` on held-out ``(x, y)``; ECE and NLL are reported at T = 1 and at the fit.

    The fit always starts from the raw logits, so calibrating twice replaces the temperature rather
    than compounding it.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise ConfigError(f"n_bins={n_bins!r} is invalid; expected a positive int, e.g. 15")
    out = model_outputs(ft, x, y, batch_size=batch_size)
    if (out.labels < 0).any():
        raise DataError("calibrate needs labelled images; expected labels for every validation image")
    temperature = fit_temperature(out.logits, out.labels)
    before, after = softmax(out.logits), softmax(out.logits, temperature)
    report = CalibrationReport(
        temperature=temperature,
        ece_before=expected_calibration_error(before, out.labels, n_bins),
        ece_after=expected_calibration_error(after, out.labels, n_bins),
        nll_before=nll(out.logits, out.labels),
        nll_after=nll(out.logits, out.labels, temperature),
        accuracy=float((before.argmax(1) == out.labels).mean()),
        n=len(out.labels),
    )
    report.bins_before = reliability_bins(before, out.labels, n_bins)
    report.bins_after = reliability_bins(after, out.labels, n_bins)
    ft.temperature = temperature
    return report


def plot_reliability(report: CalibrationReport, path: str | os.PathLike[str] | None = None) -> Any:
    from finetunekit.tools.plots import _figure, _finish

    fig, axes = _figure(2, width=4.2, height=4.0)
    for ax, key, title in (
        (axes[0], "before", "T = 1"),
        (axes[1], "after", f"T = {report['temperature']:.2f}"),
    ):
        bins = getattr(report, f"bins_{key}")
        n = len(bins["count"])
        centers = (np.arange(n) + 0.5) / n
        filled = bins["count"] > 0
        ax.bar(centers[filled], bins["accuracy"][filled], width=1.0 / n, edgecolor="black", label="accuracy")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}, ECE {report[f'ece_{key}']:.3f}")
        ax.legend(loc="upper left", fontsize="small")
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return _finish(fig, path)
