"""Multi-label and regression end to end: targets, loss, predict's activation, thresholds, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.errors import ConfigError, DataError
from finetunekit.tasks import RegressionLoss, SmoothedBCE, output_activation


def _tuner(num_classes: int = 3, **kwargs) -> FineTuner:
    torch.manual_seed(0)
    net = TinyNet(num_classes=num_classes)
    return FineTuner(
        net, num_classes=num_classes, pretrained=False, image_size=16, device="cpu", seed=0, **kwargs
    )


def _multi_hot(n: int = 48) -> tuple[np.ndarray, np.ndarray]:
    x, y = make_images(n, 3)
    rng = np.random.default_rng(0)
    multi = np.eye(3, dtype=np.float32)[y]
    multi[rng.random(n) < 0.3, 0] = 1.0  # some images also carry class 0
    return x, multi


def test_multi_hot_y_on_a_single_label_tuner_points_to_multi_label():
    x, y = _multi_hot()
    ft = _tuner()
    with pytest.raises(DataError, match="multi_label=True") as info:
        ft.fit(x, y, epochs=1, verbose=0)
    assert "argmax" not in str(info.value)


def test_one_hot_y_still_suggests_argmax_and_mentions_multi_label():
    x, y = make_images(12, 3)
    with pytest.raises(DataError, match=r"y.argmax\(1\)") as info:
        _tuner().fit(x, np.eye(3)[y], epochs=1, verbose=0)
    assert "multi_label=True" in str(info.value)


def test_multi_label_trains_with_bce_and_predicts_sigmoid_probabilities():
    x, y = _multi_hot()
    ft = _tuner(multi_label=True)
    assert ft.task == "multi_label"
    ft.compile(lr=1e-2, metrics=["accuracy", "f1_macro", "map"])
    assert isinstance(ft._compiled.loss_fn, SmoothedBCE)
    history = ft.fit(x, y, epochs=1, batch_size=16, verbose=0, validation_split=0.25)
    assert {"f1_macro", "val_map", "val_accuracy"} <= set(history.history)
    probs = ft.predict(x[:7])
    with torch.no_grad():
        ft.model.eval()
        first = ft._prepare(x[:1], None, augment=False, what="x", require_labels=False).dataset[0][0]
        expected = torch.sigmoid(ft.model(first[None]))
    assert probs.shape == (7, 3)
    assert np.allclose(probs[0], expected.numpy()[0], atol=1e-5)
    assert not np.allclose(probs.sum(1), 1.0)  # not a softmax


def test_multi_label_accepts_lists_of_class_indices():
    x, _ = make_images(6, 3)
    ft = _tuner(multi_label=True)
    data = ft._prepare(x, [[0, 2], [1], [], [0, 1, 2], [2], [1]], augment=False, what="x")
    assert data.labels.tolist()[0] == [1.0, 0.0, 1.0]
    assert data.labels.tolist()[2] == [0.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"y\[1\] contains 5"):
        ft._prepare(x, [[0], [5], [], [], [], []], augment=False, what="x")


def test_tuned_thresholds_are_used_by_metrics_and_saved(tmp_path):
    x, y = _multi_hot()
    ft = _tuner(multi_label=True).compile(lr=1e-2, metrics=["f1_macro"])
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = ft.evaluate(x, y)["f1_macro"]
    thresholds = ft.tune_thresholds(x, y)
    assert len(thresholds) == 3 and ft.threshold == thresholds
    after = ft.evaluate(x, y)["f1_macro"]
    assert after >= before  # tuned on this very data: never worse than 0.5
    ft.save(tmp_path / "m")
    loaded = FineTuner.load(tmp_path / "m", model=TinyNet(num_classes=3))
    assert loaded.task == "multi_label" and loaded.threshold == thresholds
    assert np.allclose(loaded.predict(x[:4]), ft.predict(x[:4]), atol=1e-6)


def test_threshold_is_checked():
    ft = _tuner(multi_label=True)
    with pytest.raises(ConfigError, match=r"threshold=1.5"):
        ft.threshold = 1.5
    with pytest.raises(ConfigError, match="3 of them"):
        ft.threshold = [0.5, 0.5]


def test_regression_trains_on_float_targets_and_predicts_raw_outputs():
    x, labels = make_images(40, 3)
    y = labels.astype(np.float32) * 2.0 - 1.0  # a float per image
    ft = _tuner(num_classes=1)
    ft.compile(lr=1e-2, loss="mse")  # a regression loss name makes the task regression
    assert ft.task == "regression" and isinstance(ft._compiled.loss_fn, RegressionLoss)
    history = ft.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert "mae" in history.history
    out = ft.predict(x[:5])
    assert out.shape == (5, 1) and not np.allclose(out, 1.0)  # softmax over one output would be all 1.0


def test_regression_loss_reshapes_flat_targets_instead_of_broadcasting():
    loss = RegressionLoss(torch.nn.MSELoss())
    out, y = torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 4.0])
    assert loss(out, y).item() == pytest.approx(2.0)  # broadcasting (2,1) vs (2,) would give 2.5


def test_regression_from_a_dataset_with_a_custom_loss():
    x, labels = make_images(16, 3)

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 16

        def __getitem__(self, i):
            return x[i], np.array([labels[i], -labels[i]], dtype=np.float32)

    ft = _tuner(num_classes=2, task="regression").compile(loss=torch.nn.functional.l1_loss, metrics=["mse"])
    ft.fit(Data(), epochs=1, batch_size=8, verbose=0)
    assert ft.predict(x[:3]).shape == (3, 2)


@pytest.mark.parametrize(
    ("kwargs", "loss", "needle"),
    [({"multi_label": True}, "cross_entropy", "bce"), ({}, "bce", "cross_entropy"),
     ({"task": "regression"}, "cross_entropy", "mse"), ({}, "hinge", "'hinge'")],
)  # fmt: skip
def test_a_loss_that_does_not_fit_the_task_raises(kwargs, loss, needle):
    with pytest.raises(ConfigError, match=needle):
        _tuner(**kwargs).compile(loss=loss)


def test_task_arguments_are_checked():
    with pytest.raises(ConfigError, match="task='segmentation'"):
        _tuner(task="segmentation")
    with pytest.raises(ConfigError, match="contradicts"):
        _tuner(task="regression", multi_label=True)


def test_output_activation_is_the_one_decision():
    logits = torch.tensor([[2.0, -1.0]])
    assert torch.allclose(output_activation("classification", logits).sum(1), torch.ones(1))
    assert torch.allclose(output_activation("multi_label", logits), torch.sigmoid(logits))
    assert torch.equal(output_activation("regression", logits), logits)


def test_mixup_mixes_multi_hot_targets_as_they_are():
    from finetunekit.techniques.mixing import BatchMixer

    mixer = BatchMixer(3, 0.4, 0.0, seed=0)
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    _, soft = mixer(torch.zeros(2, 3, 4, 4), y)
    lam, perm = mixer.last_lam, mixer.last_perm
    assert torch.allclose(soft, y * lam + y[perm] * (1 - lam))
    x, multi = _multi_hot(16)
    ft = _tuner(multi_label=True).compile(lr=1e-2, mixup=0.4)
    assert np.isfinite(ft.fit(x, multi, epochs=1, batch_size=8, verbose=0).history["loss"][0])
