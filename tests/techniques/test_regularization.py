"""Resisting overfitting: mixup/CutMix, label smoothing on soft targets, the gap, learning curves."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.errors import ConfigError, DataError
from finetunekit.techniques.gap import gap_logs
from finetunekit.techniques.mixing import BatchMixer
from finetunekit.tools.learning_curve import nested_stratified_indices


def _tuner(seed: int = 0) -> FineTuner:
    torch.manual_seed(seed)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, seed=seed)


def test_mixup_is_a_convex_combination_with_seeded_lambda() -> None:
    x = torch.randn(8, 3, 16, 16)
    y = torch.arange(8) % 3
    a, b = BatchMixer(3, mixup=0.4, seed=7), BatchMixer(3, mixup=0.4, seed=7)
    xa, ta = a(x, y)
    xb, tb = b(x, y)
    assert torch.equal(xa, xb) and torch.equal(ta, tb) and a.last_lam == b.last_lam
    lam, perm = a.last_lam, a.last_perm
    assert perm is not None and 0 < lam < 1
    assert torch.allclose(xa, lam * x + (1 - lam) * x[perm], atol=1e-6)
    onehot = torch.nn.functional.one_hot(y, 3).float()
    assert torch.allclose(ta, lam * onehot + (1 - lam) * onehot[perm]) and torch.allclose(
        ta.sum(1), torch.ones(8)
    )
    other = BatchMixer(3, mixup=0.4, seed=8)
    other(x, y)
    assert other.last_lam != lam


def test_cutmix_pastes_a_box_and_weights_targets_by_its_area() -> None:
    x = torch.zeros(4, 3, 16, 16)
    x[1] = 1.0
    y = torch.tensor([0, 1, 2, 0])
    mixer = BatchMixer(3, cutmix=1.0, seed=3)
    xm, t = mixer(x, y)
    perm = mixer.last_perm
    assert perm is not None
    pasted = (xm != x).any(dim=1)  # pixels that changed come from the partner image
    changed_from_partner = xm[pasted.unsqueeze(1).expand_as(xm)]
    assert torch.all((changed_from_partner == 0) | (changed_from_partner == 1))
    assert torch.allclose(t.sum(1), torch.ones(4))
    assert 0 <= mixer.last_lam <= 1
    with pytest.raises(ConfigError, match="cutmix=-1"):
        BatchMixer(3, cutmix=-1)


def test_label_smoothing_applies_to_mixed_soft_targets() -> None:
    logits = torch.randn(5, 3)
    soft = torch.tensor([[0.7, 0.3, 0.0]] * 5)
    smoothed = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(logits, soft)
    manual = -(torch.log_softmax(logits, 1) * (soft * 0.9 + 0.1 / 3)).sum(1).mean()
    assert torch.allclose(smoothed, manual, atol=1e-6)


def test_fit_with_mixup_cutmix_and_label_smoothing_trains_and_is_reproducible(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    runs = []
    for _ in range(2):
        ft = _tuner().compile(lr=1e-2, mixup=0.2, cutmix=1.0, label_smoothing=0.1)
        hist = ft.fit(x, y, epochs=4, batch_size=16, verbose=0, validation_data=(x, y))
        runs.append(hist.history)
    assert runs[0]["loss"] == runs[1]["loss"]
    assert runs[0]["val_accuracy"][-1] > 0.6  # three classes: chance is 1/3
    with pytest.raises(ConfigError, match="mixup=-0.5"):
        _tuner().compile(mixup=-0.5)


def test_gap_is_logged_per_epoch_and_shown_in_summary(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    ft = _tuner()
    hist = ft.fit(x, y, epochs=2, batch_size=16, verbose=0, validation_split=0.25)
    h = hist.history
    assert h["gap_accuracy"] == [a - v for a, v in zip(h["accuracy"], h["val_accuracy"], strict=True)]
    assert h["gap_loss"] == [v - a for a, v in zip(h["loss"], h["val_loss"], strict=True)]
    assert f"gap_accuracy={h['gap_accuracy'][-1]:+.4f}" in ft.summary()
    assert gap_logs({"loss": 1.0, "lr": 0.1}) == {}


def test_nested_stratified_fractions() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 30])
    small, big = nested_stratified_indices(labels, [0.1, 0.5], seed=0)
    assert np.bincount(labels[small]).tolist() == [1, 2, 3]
    assert np.bincount(labels[big]).tolist() == [5, 10, 15]
    assert set(small) <= set(big)


def test_learning_curve_returns_one_accuracy_per_fraction_and_leaves_tuner_alone(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    vx, vy = make_images(60, 3, 16, seed=1)
    ft = _tuner().compile(lr=1e-2)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    curve = ft.learning_curve(x, y, fractions=[0.25, 1.0], validation_data=(vx, vy), epochs=2, batch_size=16)
    assert curve.fractions == [0.25, 1.0] and curve.n_train == [30, 120]
    assert len(curve.val_accuracy) == 2 and all(0 <= a <= 1 for a in curve.val_accuracy)
    assert curve.val_accuracy[-1] > 0.5
    assert all(torch.equal(before[k], v) for k, v in ft.model.state_dict().items())
    assert "n_train" in str(curve)
    with pytest.raises(ConfigError, match="fractions"):
        ft.learning_curve(x, y, fractions=[0.0, 1.0], validation_data=(vx, vy))
    with pytest.raises(DataError, match="arrays"):
        ft.learning_curve(list(x), y, validation_data=(vx, vy))
