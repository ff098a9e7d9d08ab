"""Plots return matplotlib figures (Agg, no pyplot) and save them; a missing matplotlib is a clear error."""

from __future__ import annotations

import builtins
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("matplotlib")

from finetunekit.tools import plots
from finetunekit.tools.learning_curve import LearningCurve
from finetunekit.tools.ranking import BackboneRanking, RankingRow
from finetunekit.tools.wise import InterpolationSweep


def _ranking() -> BackboneRanking:
    rows = [RankingRow("a", {"logme": 0.5}, 8, 0.1, 0.1), RankingRow("b", {"logme": -0.2}, 8, 0.1, 0.1)]
    return BackboneRanking("logme", rows)


def test_every_plot_returns_a_figure_and_saves_it(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7], "accuracy": [0.5, 0.8], "val_accuracy": [0.4, 0.7],
               "gap_accuracy": [0.1, 0.1], "lr": [1e-3, 1e-4]}  # fmt: skip
    curve = LearningCurve([0.5, 1.0], [10, 20], [0.5, 0.7], [0.9, 0.95], [1.0, 2.0], label="x")
    sweep = InterpolationSweep([0.0, 1.0], [{"accuracy": 0.5}, {"accuracy": 0.8}], "accuracy", 1.0,
                               {"retention_feature_sim": [1.0, 0.6]})  # fmt: skip
    figures: dict[str, Any] = {
        "history": plots.plot_history(history, path=tmp_path / "history.png"),
        "lr": plots.plot_lr_find(
            [1e-5, 1e-4, 1e-3], [2.0, 1.0, 3.0], suggestion=1e-4, path=tmp_path / "lr.png"
        ),
        "curve": curve.plot(tmp_path / "curve.png"),
        "sweep": sweep.plot(tmp_path / "sweep.png"),
        "ranking": plots.plot_ranking(
            _ranking(), path=tmp_path / "ranking.png", reference={"a": 0.9, "b": 0.3}
        ),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure), name
    assert len(figures["history"].axes) == 2  # loss and accuracy; gap and lr are not panels
    assert len(figures["ranking"].axes) == 2
    for name in ("history", "lr", "curve", "sweep", "ranking"):
        saved = tmp_path / f"{name}.png"
        assert saved.stat().st_size > 1000 and saved.read_bytes()[:4] == b"\x89PNG"


def test_missing_matplotlib_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(plots.PlotDependencyError, match=r'pip install "finetunekit\[plot\]"'):
        plots.plot_lr_find([1e-3], [1.0])
