"""Plots for the questions fine-tuning raises: is it overfitting, which LR, how much data, how far to
interpolate, which backbone. Needs the ``plot`` extra (matplotlib), imported only when a plot is drawn.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, works
headless and in threads) and saves it when ``path=`` is given (format from the file suffix).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from finetunekit.errors import FineTuneKitError

PathLike = str | os.PathLike[str] | None


class PlotDependencyError(FineTuneKitError, ImportError):
    """matplotlib, needed for plots, is not installed."""


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Any, list[Any]]:
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotDependencyError(
            'plots need matplotlib, which is not installed. Fix: pip install "finetunekit[plot]"'
        ) from e
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig, axes


def _finish(fig: Any, path: PathLike) -> Any:
    if path is not None:
        fig.savefig(os.fspath(path), dpi=120)
    return fig


def plot_history(history: Any, path: PathLike = None, metrics: Sequence[str] | None = None) -> Any:
    """Loss and each metric per epoch, training vs validation (a History or its ``.history`` dict)."""
    record: Mapping[str, Sequence[float]] = getattr(history, "history", history)
    epochs = list(getattr(history, "epoch", []) or range(len(record.get("loss", []))))
    names = list(metrics) if metrics is not None else [
        k for k in record if not k.startswith(("val_", "gap_", "retention_")) and k != "lr"
    ]  # fmt: skip
    fig, axes = _figure(max(1, len(names)))
    for ax, name in zip(axes, names, strict=False):
        if name in record:
            ax.plot(epochs[: len(record[name])], record[name], "o-", label=f"train {name}")
        if f"val_{name}" in record:
            ax.plot(epochs[: len(record[f"val_{name}"])], record[f"val_{name}"], "s-", label=f"val {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
    return _finish(fig, path)


def plot_lr_find(
    lrs: Sequence[float], losses: Sequence[float], suggestion: float | None = None, path: PathLike = None
) -> Any:
    """Loss against learning rate (log x axis), with the suggested LR marked."""
    fig, (ax,) = _figure()
    ax.plot(list(lrs), list(losses), "-")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    if suggestion is not None:
        ax.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2e}")
        ax.legend()
    return _finish(fig, path)


def plot_learning_curve(curves: Any, path: PathLike = None) -> Any:
    """Validation (solid) and training (dashed) accuracy against training-set size, one line per curve."""
    curves = curves if isinstance(curves, (list, tuple)) else [curves]
    fig, (ax,) = _figure()
    for curve in curves:
        line = ax.plot(curve.n_train, curve.val_accuracy, "o-", label=f"{curve.label} val")[0]
        ax.plot(curve.n_train, curve.train_accuracy, "--", color=line.get_color(), alpha=0.6,
                label=f"{curve.label} train")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
    return _finish(fig, path)


def plot_interpolation(sweep: Any, path: PathLike = None) -> Any:
    """WiSE-FT: validation metric (and feature similarity, if measured) against alpha."""
    fig, (ax,) = _figure()
    ax.plot(sweep.alphas, sweep.accuracy, "o-", label=f"val {sweep.metric}")
    ax.set_xlabel("alpha (0 = pretrained backbone, 1 = fine-tuned)")
    ax.set_ylabel(sweep.metric)
    ax.axvline(sweep.best_alpha, color="tab:green", linestyle=":", label=f"best alpha {sweep.best_alpha:g}")
    if "retention_feature_sim" in sweep.extra:
        twin = ax.twinx()
        twin.plot(sweep.alphas, sweep.extra["retention_feature_sim"], "s--", color="tab:orange",
                  label="feature similarity")  # fmt: skip
        twin.set_ylabel("feature similarity to pretrained")
        twin.legend(loc="lower left")
    ax.legend(loc="lower right")
    return _finish(fig, path)


def plot_ranking(ranking: Any, path: PathLike = None, reference: Mapping[str, float] | None = None) -> Any:
    """Horizontal bars of each backbone's score; with ``reference`` (e.g. fine-tuned accuracies), a
    second panel plots score against it."""
    fig, axes = _figure(2 if reference else 1)
    names = ranking.names[::-1]
    scores = ranking.scores()
    axes[0].barh(names, [scores[n] for n in names])
    axes[0].set_xlabel(ranking.method)
    if reference:
        shared = [n for n in ranking.names if n in reference]
        axes[1].scatter([scores[n] for n in shared], [reference[n] for n in shared])
        for n in shared:
            axes[1].annotate(n, (scores[n], reference[n]), fontsize="small")
        axes[1].set_xlabel(ranking.method)
        axes[1].set_ylabel("reference")
    return _finish(fig, path)
