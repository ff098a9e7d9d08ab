"""Class imbalance: per-sample loss weights (Keras semantics) and the weighted sampler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from sklearn.utils.class_weight import compute_class_weight

from finetunekit import FineTuner
from finetunekit.data.weights import LossWeighting, WeightedEpochSampler, balanced_weights
from finetunekit.errors import ConfigError, DataError


def _tuner(**compile_kwargs) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(
        TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu", seed=0
    )
    return ft.compile(lr=1e-12, schedule="constant", **compile_kwargs)


def _first_epoch_loss(**fit_kwargs) -> float:
    x, y = make_images(24, 3)
    return (
        _tuner().fit(x, y, epochs=1, batch_size=8, augment=False, verbose=0, **fit_kwargs).history["loss"][0]
    )


def test_uniform_sample_weight_scales_the_training_loss_by_its_factor():
    plain = _first_epoch_loss()
    assert _first_epoch_loss(sample_weight=np.full(24, 2.0)) == pytest.approx(2 * plain, rel=1e-5)
    assert _first_epoch_loss(class_weight={0: 3.0, 1: 3.0, 2: 3.0}) == pytest.approx(3 * plain, rel=1e-5)


def test_class_weight_weights_each_sample_by_its_class_keras_style():
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    per_sample = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    weighting = LossWeighting(torch.nn.CrossEntropyLoss(), torch.tensor([1.0, 4.0, 0.0]))
    expected = (
        per_sample * torch.tensor([1.0, 4.0, 0.0, 1.0, 4.0, 0.0])
    ).sum() / 6  # / batch size, not / sum(w)
    assert weighting(logits, y, None).item() == pytest.approx(expected.item())
    sample = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    assert weighting(logits, y, sample).item() == pytest.approx((per_sample[3:].sum() / 6).item())


def test_soft_targets_from_mixing_get_the_expected_class_weight():
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    weighting = LossWeighting(torch.nn.CrossEntropyLoss(), torch.tensor([1.0, 3.0, 5.0]))
    assert torch.allclose(weighting.weights(soft, None), torch.tensor([2.0, 5.0]))


def test_balanced_class_weights_equal_sklearn():
    y = np.array([0] * 50 + [1] * 10 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=y)
    assert np.allclose(balanced_weights(y, 3, "class_weight"), expected)


def test_balanced_class_weight_reaches_the_loss():
    x, y = make_images(24, 3)
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y != 0)[:6]]  # 8 of class 0, 6 of the others
    ft = _tuner()
    from finetunekit.callbacks import LambdaCallback

    seen = []
    record = LambdaCallback(on_train_begin=lambda logs: seen.append(ft._trainer.loss_weighting))
    ft.fit(x[keep], y[keep], epochs=1, batch_size=8, verbose=0, augment=False, class_weight="balanced",
           callbacks=[record])  # fmt: skip
    table = seen[0].class_weights.numpy()
    assert np.allclose(table, compute_class_weight("balanced", classes=np.arange(3), y=y[keep]))


@pytest.mark.parametrize(
    ("kwargs", "error", "needle"),
    [({"class_weight": {0: 1.0}, "sample_weight": np.ones(24)}, ConfigError, "both"),
     ({"class_weight": {7: 1.0}}, ConfigError, "key 7"),
     ({"class_weight": {0: -1.0}}, ConfigError, r"class_weight\[0\]=-1.0"),
     ({"class_weight": "inverse"}, ConfigError, "'inverse'"),
     ({"sample_weight": np.ones(5)}, DataError, r"shape \(5,\)"),
     ({"sample_weight": -np.ones(24)}, DataError, "negative"),
     ({"sampling_weights": "uniform"}, ConfigError, "'uniform'")],
)  # fmt: skip
def test_bad_weights_raise_before_training(kwargs, error, needle):
    x, y = make_images(24, 3)
    ft = _tuner()
    before = [p.clone() for p in ft.model.parameters()]
    with pytest.raises(error, match=needle):
        ft.fit(x, y, epochs=1, batch_size=8, verbose=0, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(before, ft.model.parameters(), strict=True))


def test_a_loss_without_reduction_cannot_be_weighted():
    x, y = make_images(24, 3)
    ft = _tuner(loss=lambda logits, target: torch.nn.functional.cross_entropy(logits, target))
    with pytest.raises(ConfigError, match="reduction"):
        ft.fit(x, y, epochs=1, verbose=0, class_weight={0: 2.0})


def test_sample_weights_follow_a_validation_split():
    x, y = make_images(30, 3)
    ft = _tuner()
    weights = np.arange(30, dtype=np.float32)
    from finetunekit.training import setup

    train, _ = setup.fit_data(ft._prepare, x, y, validation_split=0.2, validation_data=None, augment=False,
                              split_seed=lambda: 0, attach=_imbalance(weights).attach)  # fmt: skip
    kept = train.sample_weights
    assert len(kept) == 24 and set(kept.tolist()) <= set(weights.tolist())
    assert train.dataset.indices == [int(w) for w in kept]  # weight i stays with sample i


def _imbalance(sample_weight):
    from finetunekit.data.weights import Imbalance

    return Imbalance(None, sample_weight, None, 3, "classification")


def test_weighted_sampler_is_a_function_of_seed_and_epoch():
    weights = np.array([1.0, 1.0, 8.0, 0.0])
    a, b = WeightedEpochSampler(weights, seed=3), WeightedEpochSampler(weights, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    assert list(a) == list(b) == list(a)  # replayable: a resumed epoch draws the same indices
    c, d = WeightedEpochSampler(np.ones(40), seed=3), WeightedEpochSampler(np.ones(40), seed=3)
    d.set_epoch(1)
    assert list(c) != list(d)
    draws = np.concatenate([list(WeightedEpochSampler(weights, seed=s)) for s in range(200)])
    assert 3 not in draws and abs(np.mean(draws == 2) - 0.8) < 0.05
    ranks = [list(WeightedEpochSampler(weights, seed=3, num_replicas=2, rank=r)) for r in (0, 1)]
    whole = list(WeightedEpochSampler(weights, seed=3))
    assert whole[0::2] == ranks[0] and whole[1::2] == ranks[1]


def test_balanced_sampling_draws_each_class_about_equally():
    x, y = make_images(60, 3)
    keep = np.r_[np.flatnonzero(y == 0), np.flatnonzero(y == 1)[:4], np.flatnonzero(y == 2)[:4]]
    ft = _tuner()
    seen = []
    from finetunekit.callbacks import LambdaCallback

    record = LambdaCallback(on_epoch_begin=lambda e, logs: seen.append(list(ft._trainer.loader.sampler)))
    ft.fit(
        x[keep], y[keep], epochs=3, batch_size=7, verbose=0, sampling_weights="balanced", callbacks=[record]
    )
    labels = y[keep][np.concatenate(seen)]
    assert np.bincount(labels).min() > 0.2 * len(labels)  # unweighted, classes 1 and 2 would be 14% each
