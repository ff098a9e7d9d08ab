"""Every named metric equals scikit-learn's value on the same predictions, accumulated over batches."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from finetunekit.errors import ConfigError
from finetunekit.metrics import MetricTracker, check_metrics

N, C = 97, 5


def _single_label(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (N,), generator=g)
    logits = torch.randn(N, C, generator=g) + 1.5 * torch.nn.functional.one_hot(y, C)
    return logits, y


def _multi_label(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(N, C, generator=g) < 0.35).float()
    y[0] = 1.0  # every column has positives and negatives
    y[1] = 0.0
    logits = torch.randn(N, C, generator=g) + 2.0 * (y - 0.5)
    return logits, y


def _track(names, task, logits, y, threshold=0.5, batch=16):
    tracker = MetricTracker(check_metrics(names, task, C), torch.device("cpu"))
    tracker.set.threshold = threshold
    for start in range(0, N, batch):  # in batches: sums must add up exactly
        tracker.update(torch.tensor(0.0), logits[start : start + batch], y[start : start + batch])
    return tracker.result()


def _ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += mask.mean() * abs(conf[mask].mean() - (pred[mask] == y[mask]).mean())
    return total


def test_single_label_metrics_equal_sklearn():
    logits, y = _single_label()
    probs = torch.softmax(logits, 1).numpy()
    pred, yn = probs.argmax(1), y.numpy()
    names = ["acc", "top2", "top5_accuracy", "precision", "recall", "f1", "f1_macro", "f1_micro",
             "precision_micro", "recall_macro", "balanced_accuracy", "auroc", "ece"]  # fmt: skip
    got = _track(names, "classification", logits, y)
    expected = {
        "acc": skm.accuracy_score(yn, pred),
        "top2": skm.top_k_accuracy_score(yn, probs, k=2),
        "top5_accuracy": 1.0,
        "precision": skm.precision_score(yn, pred, average="macro", zero_division=0),
        "recall": skm.recall_score(yn, pred, average="macro", zero_division=0),
        "f1": skm.f1_score(yn, pred, average="macro", zero_division=0),
        "f1_macro": skm.f1_score(yn, pred, average="macro", zero_division=0),
        "f1_micro": skm.f1_score(yn, pred, average="micro"),
        "precision_micro": skm.precision_score(yn, pred, average="micro"),
        "recall_macro": skm.recall_score(yn, pred, average="macro", zero_division=0),
        "balanced_accuracy": skm.balanced_accuracy_score(yn, pred),
        "auroc": skm.roc_auc_score(yn, probs, multi_class="ovr", average="macro"),
        "ece": _ece(probs, yn),
    }
    assert list(got) == ["loss", *names]  # logged under the names given, in order
    for name, value in expected.items():  # scores are float32, sklearn's sums float64
        assert got[name] == pytest.approx(value, abs=1e-6), name


def test_macro_average_skips_classes_neither_predicted_nor_present_like_sklearn():
    logits, y = _single_label(1)
    keep = y != 4
    logits, y = logits[keep], y[keep]
    logits[:, 4] = -10  # class 4: never true, never predicted
    pred = logits.argmax(1).numpy()
    got = _track(["f1", "precision"], "classification", logits, y)
    assert got["f1"] == pytest.approx(skm.f1_score(y.numpy(), pred, average="macro", zero_division=0))
    assert got["precision"] == pytest.approx(
        skm.precision_score(y.numpy(), pred, average="macro", zero_division=0)
    )


@pytest.mark.parametrize("threshold", [0.5, 0.3, [0.2, 0.4, 0.5, 0.6, 0.8]])
def test_multi_label_metrics_equal_sklearn(threshold):
    logits, y = _multi_label()
    probs = torch.sigmoid(logits).numpy()
    pred = (probs >= np.asarray(threshold)).astype(int)
    yn = y.numpy().astype(int)
    names = [
        "accuracy",
        "subset_accuracy",
        "f1",
        "f1_micro",
        "precision_macro",
        "recall_micro",
        "map",
        "auroc",
    ]
    got = _track(names, "multi_label", logits, y, threshold)
    expected = {
        "accuracy": 1 - skm.hamming_loss(yn, pred),
        "subset_accuracy": skm.accuracy_score(yn, pred),
        "f1": skm.f1_score(yn, pred, average="macro", zero_division=0),
        "f1_micro": skm.f1_score(yn, pred, average="micro", zero_division=0),
        "precision_macro": skm.precision_score(yn, pred, average="macro", zero_division=0),
        "recall_micro": skm.recall_score(yn, pred, average="micro", zero_division=0),
        "map": skm.average_precision_score(yn, probs, average="macro"),
        "auroc": skm.roc_auc_score(yn, probs, average="macro"),
    }
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-9), name


def test_a_different_threshold_changes_f1():
    logits, y = _multi_label()
    assert (
        _track(["f1"], "multi_label", logits, y, 0.5)["f1"]
        != _track(["f1"], "multi_label", logits, y, 0.9)["f1"]
    )


def test_ranking_metrics_handle_ties_like_sklearn():
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.5, 0.5, 0.9, 0.1, 0.5, 0.9, 0.2, 0.7])
    logits = torch.tensor(np.stack([np.zeros(8), np.log(scores / (1 - scores))], 1))
    target = torch.tensor(np.stack([1 - y, y], 1), dtype=torch.float32)
    got = MetricTracker(check_metrics(["map", "auroc"], "multi_label", 2), torch.device("cpu"))
    got.update(torch.tensor(0.0), logits, target)
    result = got.result()
    both = np.stack([1 - y, y], 1)
    probs = torch.sigmoid(logits).numpy()
    assert result["auroc"] == pytest.approx(skm.roc_auc_score(both, probs, average="macro"))
    assert result["map"] == pytest.approx(skm.average_precision_score(both, probs, average="macro"))


def test_regression_metrics_equal_sklearn():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(N, 2, generator=g)
    out = y + 0.3 * torch.randn(N, 2, generator=g)
    tracker = MetricTracker(check_metrics(["mae", "mse", "rmse"], "regression", 2), torch.device("cpu"))
    tracker.update(torch.tensor(0.0), out[:50], y[:50])
    tracker.update(torch.tensor(0.0), out[50:], y[50:])
    got = tracker.result()
    assert got["mae"] == pytest.approx(skm.mean_absolute_error(y, out))
    assert got["mse"] == pytest.approx(skm.mean_squared_error(y, out))
    assert got["rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(y, out)))


def test_torchmetrics_objects_are_accumulated_and_named():
    torchmetrics = pytest.importorskip("torchmetrics")
    logits, y = _single_label()
    metric = torchmetrics.classification.MulticlassF1Score(num_classes=C, average="macro")
    got = _track([metric, "accuracy"], "classification", logits, y)
    pred = logits.argmax(1).numpy()
    assert got["multiclass_f1_score"] == pytest.approx(
        skm.f1_score(y.numpy(), pred, average="macro"), abs=1e-6
    )
    assert metric.update_count == 0  # the tracker works on its own copy


@pytest.mark.parametrize(
    ("names", "task", "needle"),
    [(["f7"], "classification", "'f7'"), (["map"], "classification", "'map'"),
     (["auroc", "auroc"], "classification", "twice"), (["accuracy"], "regression", "mae")],
)  # fmt: skip
def test_unknown_or_misplaced_metric_names_raise(names, task, needle):
    with pytest.raises(ConfigError, match=needle):
        check_metrics(names, task, C)


def test_binary_auroc_uses_the_positive_class_like_sklearn():
    g = torch.Generator().manual_seed(3)
    y = torch.randint(0, 2, (50,), generator=g)
    logits = torch.randn(50, 2, generator=g) + torch.nn.functional.one_hot(y, 2)
    tracker = MetricTracker(check_metrics(["auroc"], "classification", 2), torch.device("cpu"))
    tracker.update(torch.tensor(0.0), logits, y)
    probs = torch.softmax(logits, 1).numpy()
    assert tracker.result()["auroc"] == pytest.approx(skm.roc_auc_score(y.numpy(), probs[:, 1]))


def test_fit_logs_metrics_under_the_names_given_keras_style():
    from helpers import TinyNet, make_images

    from finetunekit import FineTuner

    x, y = make_images(24, 3)
    ft = FineTuner(
        TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu", seed=0
    )
    ft.compile(metrics=["acc", "top2", "f1_macro"])
    history = ft.fit(x, y, epochs=1, batch_size=8, validation_split=0.25, verbose=0)
    assert {"acc", "val_acc", "top2", "val_top2", "f1_macro", "val_f1_macro"} <= set(history.history)
    assert set(ft.evaluate(x, y)) == {"loss", "acc", "top2", "f1_macro"}
