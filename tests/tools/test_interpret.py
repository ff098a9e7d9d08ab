"""interpret(): the confusion matrix, most-confused pairs, top losses and the per-class report agree with
scikit-learn on the same predictions; folders give file names; plots draw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.errors import ConfigError, DataError
from finetunekit.tools.interpret import Interpretation

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _tuner(num_classes: int = 3) -> FineTuner:
    import torch

    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=num_classes), num_classes=num_classes, image_size=16, device="cpu",
                     class_names=[f"c{i}" for i in range(num_classes)])  # fmt: skip


def _random_interp(seed: int, n: int = 200, c: int = 5) -> Interpretation:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) + 2.0 * np.eye(c)[labels] * rng.random((n, 1))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if seed == 1:  # a class never predicted and never present: scikit-learn's zero_division path
        probs[:, c - 1] = 0.0
        labels[labels == c - 1] = 0
    return Interpretation(probs, labels, [f"class_{i}" for i in range(c)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_report_matches_sklearn_text_and_dict(seed: int) -> None:
    interp = _random_interp(seed)
    kwargs = dict(labels=list(range(5)), target_names=interp.class_names, zero_division=0)
    for digits in (2, 4):
        expected = sklearn_metrics.classification_report(interp.labels, interp.preds, digits=digits, **kwargs)
        assert interp.classification_report(digits=digits) == expected
    expected_dict = sklearn_metrics.classification_report(
        interp.labels, interp.preds, output_dict=True, **kwargs
    )
    got = interp.classification_report(output_dict=True)
    assert got.keys() == expected_dict.keys()
    assert got["accuracy"] == pytest.approx(expected_dict["accuracy"])
    for key, row in expected_dict.items():
        if key != "accuracy":
            assert got[key] == pytest.approx(row), key


def test_present_only_matches_sklearns_default_labels() -> None:
    interp = _random_interp(1)  # class 4 is neither a label nor a prediction
    names = interp.class_names[:4]
    expected = sklearn_metrics.classification_report(
        interp.labels, interp.preds, target_names=names, digits=3
    )
    assert interp.classification_report(digits=3, present_only=True) == expected
    assert "class_4" in interp.classification_report() and "class_4" not in expected


def test_confusion_matrix_and_most_confused_match_sklearn() -> None:
    interp = _random_interp(0)
    cm = sklearn_metrics.confusion_matrix(interp.labels, interp.preds, labels=list(range(5)))
    np.testing.assert_array_equal(interp.confusion_matrix(), cm)
    pairs = interp.most_confused()
    off = [(i, j) for i in range(5) for j in range(5) if i != j and cm[i, j] > 0]
    assert len(pairs) == len(off)
    assert [p[2] for p in pairs] == sorted((int(cm[i, j]) for i, j in off), reverse=True)
    actual, predicted, count = pairs[0]
    assert cm[int(actual[-1]), int(predicted[-1])] == count
    assert interp.most_confused(2) == pairs[:2]
    with pytest.raises(ConfigError, match="k=0"):
        interp.most_confused(0)


def test_top_losses_are_the_largest_cross_entropies() -> None:
    interp = _random_interp(2)
    tops = interp.top_losses(5)
    ce = -np.log(interp.probs[np.arange(len(interp.labels)), interp.labels])
    np.testing.assert_allclose([t.loss for t in tops], np.sort(ce)[::-1][:5])
    assert tops[0].index == int(np.argmax(ce))
    assert tops[0].actual == interp.class_names[interp.labels[tops[0].index]]


def test_interpret_on_a_tuner_matches_predict_and_gives_the_images() -> None:
    x, y = make_images(n=30, size=16)
    ft = _tuner()
    interp = ft.interpret(x, y)
    np.testing.assert_allclose(interp.probs, ft.predict(x), atol=1e-5)
    top = interp.top_losses(1)[0]
    np.testing.assert_array_equal(interp.image(top.index), x[top.index])
    assert top.file is None
    assert interp.confusion_matrix().sum() == len(y)


def test_interpret_on_a_folder_names_the_files(tmp_path: Path) -> None:
    from PIL import Image

    x, y = make_images(n=12, size=16)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (tmp_path / f"c{label}").mkdir(exist_ok=True)
        Image.fromarray(image).save(tmp_path / f"c{label}" / f"img{i}.png")
    ft = _tuner()
    interp = ft.interpret(tmp_path)
    top = interp.top_losses(3)
    assert all(t.file is not None and Path(t.file).is_file() for t in top)
    assert Path(top[0].file).parent.name == top[0].actual
    assert interp.image(top[0].index).shape == (16, 16, 3)


def test_interpret_needs_labels() -> None:
    x, _ = make_images(n=6, size=16)
    with pytest.raises(DataError):
        _tuner().interpret(x)


def test_plots_draw_and_save(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    x, y = make_images(n=12, size=16)
    interp = _tuner().interpret(x, y)
    interp.plot_confusion_matrix(tmp_path / "cm.png")
    interp.plot_confusion_matrix(tmp_path / "cm_norm.png", normalize=True)
    fig = interp.plot_top_losses(4, path=tmp_path / "top.png")
    assert (tmp_path / "cm.png").stat().st_size > 1000 and (tmp_path / "top.png").stat().st_size > 1000
    assert len(fig.axes) == 4
