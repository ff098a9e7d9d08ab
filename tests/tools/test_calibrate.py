"""Temperature scaling: recovers a known temperature, lowers ECE, keeps the argmax, is saved with the
model and used by predict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.errors import ConfigError, DataError
from finetunekit.tools.calibrate import (
    expected_calibration_error,
    fit_temperature,
    model_outputs,
    softmax,
)


def _overconfident(t_true: float, n: int = 4000, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the logits shown are z * t_true, so the right temperature is t_true."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=2.0, size=(n, c))
    p = softmax(z)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return z * t_true, labels


def test_fit_temperature_recovers_a_known_temperature() -> None:
    logits, labels = _overconfident(2.5)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.08)
    before = expected_calibration_error(softmax(logits), labels)
    after = expected_calibration_error(softmax(logits, t), labels)
    assert after < before / 3


def test_ece_by_hand() -> None:
    # two bins used of 10: confidences 0.95 (right) and 0.95 (wrong) -> acc 0.5, conf 0.95; 0.55 right
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45]])
    labels = np.array([0, 1, 0])
    expected = (2 / 3) * abs(0.5 - 0.95) + (1 / 3) * abs(1.0 - 0.55)
    assert expected_calibration_error(probs, labels, n_bins=10) == pytest.approx(expected)


def test_separable_data_is_refused_by_name() -> None:
    logits = np.array([[5.0, -5.0], [-5.0, 5.0]] * 10)
    with pytest.raises(DataError, match="gets 100% of these 20 right"):
        fit_temperature(logits, np.array([0, 1] * 10))


def _trained(seed: int = 0) -> tuple[FineTuner, np.ndarray, np.ndarray]:
    torch.manual_seed(seed)
    x, y = make_images(n=90, size=16, seed=seed)
    noisy = y.copy()
    noisy[::4] = (noisy[::4] + 1) % 3  # label noise, so a trained net is over-confident
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, image_size=16, device="cpu", seed=seed)
    ft.compile(lr=0.05)
    ft.fit(x, noisy, epochs=4, batch_size=16, verbose=0, augment=False)
    return ft, x, noisy


def test_calibrate_sets_the_temperature_used_by_predict_and_saved(tmp_path: Path) -> None:
    ft, x, y = _trained()
    logits = model_outputs(ft, x, y).logits
    argmax_before = ft.predict(x).argmax(1)
    report = ft.calibrate(x, y)
    assert set(report) >= {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "accuracy"}
    t = report["temperature"]
    assert ft.temperature == t != 1.0
    assert report["nll_after"] <= report["nll_before"] + 1e-9
    probs = ft.predict(x)
    np.testing.assert_allclose(probs, softmax(logits, t), atol=1e-5)
    np.testing.assert_array_equal(probs.argmax(1), argmax_before)
    ft.save(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["temperature"] == t
    loaded = FineTuner.load(tmp_path / "m", device="cpu", model=TinyNet(num_classes=3))
    assert loaded.temperature == t
    np.testing.assert_allclose(loaded.predict(x), probs, atol=1e-6)
    again = ft.calibrate(x, y)  # refit from the raw logits: same T, not T squared
    assert again["temperature"] == pytest.approx(t, rel=1e-6)


def test_a_bad_saved_temperature_names_the_value(tmp_path: Path) -> None:
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, image_size=16, device="cpu")
    ft.temperature = -1.0
    ft.save(tmp_path / "m")
    with pytest.raises(ConfigError, match="temperature=-1.0"):
        FineTuner.load(tmp_path / "m", device="cpu", model=TinyNet(num_classes=3))


def test_calibrate_needs_labels_and_plot_draws(tmp_path: Path) -> None:
    ft, x, y = _trained()
    with pytest.raises(DataError):
        ft.calibrate(x)
    with pytest.raises(ConfigError, match="n_bins=0"):
        ft.calibrate(x, y, n_bins=0)
    pytest.importorskip("matplotlib")
    report = ft.calibrate(x, y)
    fig = report.plot(tmp_path / "rel.png")
    assert (tmp_path / "rel.png").stat().st_size > 1000 and len(fig.axes) == 2
