"""What the model gets wrong: confusion matrix, most-confused pairs, top losses, per-class report.

After fastai's ``ClassificationInterpretation``: one pass over labelled data keeps the probabilities,
labels and per-image losses, and every view is computed from them. ``classification_report`` follows
scikit-learn's ``classification_report(y, pred, labels=range(C), target_names=names,
zero_division=0)`` exactly (text and ``output_dict``) without needing scikit-learn.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from finetunekit.errors import ConfigError, DataError
from finetunekit.tools.calibrate import model_outputs, softmax

HEADERS = ("precision", "recall", "f1-score", "support")


@dataclass(frozen=True)
class TopLoss:
    """One badly predicted image: its index in the data, loss, true and predicted class, file if any."""

    index: int
    loss: float
    actual: str
    predicted: str
    probability: float  # the model's probability of the predicted class
    file: str | None


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den with 0 where den is 0 (scikit-learn's ``zero_division=0``)."""
    out = np.zeros_like(num, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


class Interpretation:
    """Views of one model's predictions on labelled data; build it with ``ft.interpret(x, y)``."""

    def __init__(
        self, probs: np.ndarray, labels: np.ndarray, class_names: list[str], *,
        files: list[str] | None = None, images: Any = None, dataset: Any = None,
    ) -> None:  # fmt: skip
        self.probs = probs
        self.labels = labels
        self.class_names = class_names
        self.preds = probs.argmax(axis=1)
        picked = probs[np.arange(len(labels)), labels]
        self.losses = -np.log(np.clip(picked, np.finfo(np.float64).tiny, None))
        self.files = files
        self._images = images
        self._dataset = dataset

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def confusion_matrix(self) -> np.ndarray:
        """Counts, rows = true class, columns = predicted class (scikit-learn's layout)."""
        c = self.num_classes
        return np.bincount(self.labels * c + self.preds, minlength=c * c).reshape(c, c)

    def most_confused(self, k: int | None = None, min_count: int = 1) -> list[tuple[str, str, int]]:
        """``(actual, predicted, count)`` of the off-diagonal cells, largest first (ties by class order)."""
        cm = self.confusion_matrix()
        pairs = [
            (self.class_names[i], self.class_names[j], int(cm[i, j]))
            for i in range(self.num_classes) for j in range(self.num_classes)
            if i != j and cm[i, j] >= min_count
        ]  # fmt: skip
        pairs.sort(key=lambda t: -t[2])
        return pairs if k is None else pairs[: _check_k(k)]

    def top_losses(self, k: int = 9) -> list[TopLoss]:
        """The ``k`` images with the highest cross-entropy, highest first."""
        order = np.argsort(-self.losses, kind="stable")[: _check_k(k)]
        return [
            TopLoss(
                index=int(i), loss=float(self.losses[i]), actual=self.class_names[self.labels[i]],
                predicted=self.class_names[self.preds[i]], probability=float(self.probs[i, self.preds[i]]),
                file=self.files[i] if self.files is not None else None,
            )
            for i in order
        ]  # fmt: skip

    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 H×W(×C): as given for arrays, decoded for files, else de-normalized."""
        if self.files is not None:
            from PIL import Image

            with Image.open(self.files[index]) as im:
                return np.asarray(im.convert("RGB" if im.mode not in ("L", "RGB") else im.mode))
        if self._images is not None:
            image = np.asarray(self._images[index])
            if image.dtype == np.uint8:
                if image.ndim == 3 and image.shape[-1] not in (1, 3, 4) and image.shape[0] in (1, 3, 4):
                    image = image.transpose(1, 2, 0)  # C×H×W given
                return image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        return self._denormalized(index)

    def _denormalized(self, index: int) -> np.ndarray:
        tensor = self._dataset[index][0]
        config = self._dataset.transform.data_config
        c = tensor.shape[0]
        mean = np.resize(np.asarray(config.mean), c).reshape(c, 1, 1)
        std = np.resize(np.asarray(config.std), c).reshape(c, 1, 1)
        image = (tensor.numpy() * std + mean) * 255.0
        return np.clip(image.round(), 0, 255).astype(np.uint8).transpose(1, 2, 0)

    def _per_class(self) -> tuple[np.ndarray, ...]:
        cm = self.confusion_matrix().astype(np.float64)
        tp, pred_total, support = np.diag(cm), cm.sum(axis=0), cm.sum(axis=1)
        precision, recall = _ratio(tp, pred_total), _ratio(tp, support)
        f1 = _ratio(2 * tp, pred_total + support)  # 2tp / (2tp + fp + fn), as scikit-learn
        return precision, recall, f1, support

    def _report_classes(self, present_only: bool) -> list[int]:
        if not present_only:
            return list(range(self.num_classes))
        return sorted(set(self.labels.tolist()) | set(self.preds.tolist()))  # scikit-learn's labels=None

    def report_dict(self, present_only: bool = False) -> dict[str, Any]:
        """scikit-learn's ``output_dict=True`` structure: per class, accuracy, macro and weighted avg."""
        keep = self._report_classes(present_only)
        p, r, f1, s = (v[keep] for v in self._per_class())
        out: dict[str, Any] = {
            self.class_names[c]: dict(
                zip(HEADERS, (float(p[i]), float(r[i]), float(f1[i]), float(s[i])), strict=True)
            )
            for i, c in enumerate(keep)
        }
        total = float(s.sum())
        out["accuracy"] = float(np.trace(self.confusion_matrix()) / total) if total else 0.0
        for heading, weights in (("macro avg", None), ("weighted avg", s)):
            # np.average, as scikit-learn, so the last digit rounds the same way
            values = [float(np.average(v, weights=weights)) if total else 0.0 for v in (p, r, f1)]
            out[heading] = dict(zip(HEADERS, (*values, total), strict=True))
        return out

    def classification_report(
        self, digits: int = 2, output_dict: bool = False, present_only: bool = False
    ) -> str | dict[str, Any]:
        """Per-class precision / recall / F1 / support, laid out as scikit-learn's text report.

        Every class is listed (scikit-learn's ``labels=range(C)``); ``present_only=True`` lists only
        the classes in the labels or predictions, as scikit-learn does without ``labels=``."""
        d = self.report_dict(present_only)
        if output_dict:
            return d
        names = [self.class_names[c] for c in self._report_classes(present_only)]
        width = max(*(len(n) for n in names), len("weighted avg"), digits)
        text = ("{:>{width}s} " + " {:>9}" * 4).format("", *HEADERS, width=width) + "\n\n"
        row = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
        for name in names:
            v = d[name]
            text += row.format(name, v["precision"], v["recall"], v["f1-score"], int(v["support"]),
                               width=width, digits=digits)  # fmt: skip
        text += "\n"
        total = int(d["macro avg"]["support"])
        accuracy_row = "{:>{width}s} " + " {:>9.{digits}}" * 2 + " {:>9.{digits}f}" + " {:>9}\n"
        text += accuracy_row.format("accuracy", "", "", d["accuracy"], total, width=width, digits=digits)
        for heading in ("macro avg", "weighted avg"):
            v = d[heading]
            text += row.format(heading, v["precision"], v["recall"], v["f1-score"], total,
                               width=width, digits=digits)  # fmt: skip
        return text

    def plot_confusion_matrix(
        self, path: str | os.PathLike[str] | None = None, normalize: bool = False
    ) -> Any:
        """The matrix as a heat map with counts (or row fractions with ``normalize=True``) in each cell."""
        from finetunekit.tools.plots import _figure, _finish

        cm = self.confusion_matrix().astype(np.float64)
        if normalize:
            cm = _ratio(cm, cm.sum(axis=1, keepdims=True).repeat(cm.shape[1], axis=1))
        side = max(3.5, 0.45 * self.num_classes + 1.5)
        fig, (ax,) = _figure(width=side + 0.8, height=side)
        ax.grid(False)
        shown = ax.imshow(cm, cmap="Blues")
        fig.colorbar(shown, ax=ax, shrink=0.8)
        ticks = np.arange(self.num_classes)
        ax.set_xticks(ticks, self.class_names, rotation=90 if self.num_classes > 6 else 0)
        ax.set_yticks(ticks, self.class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("actual")
        for i in range(self.num_classes):
            for j in range(self.num_classes):
                text = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                color = "white" if cm[i, j] > cm.max() / 2 else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize="small")
        return _finish(fig, path)

    def plot_top_losses(self, k: int = 9, path: str | os.PathLike[str] | None = None) -> Any:
        """A grid of the ``k`` worst images titled predicted / actual / loss / probability."""
        from finetunekit.tools.plots import _figure, _finish

        tops = self.top_losses(k)
        cols = min(len(tops), 3) or 1
        rows = -(-len(tops) // cols)
        fig, _ = _figure(ncols=1, width=2.6 * cols, height=2.8 * max(rows, 1))
        fig.clear()
        for n, top in enumerate(tops):
            ax = fig.add_subplot(rows, cols, n + 1)
            image = self.image(top.index)
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
            ax.set_title(
                f"{top.predicted} / {top.actual}\n{top.loss:.2f} / {top.probability:.2f}", fontsize="small"
            )
            ax.axis("off")
        fig.suptitle("predicted / actual, loss / probability")
        return _finish(fig, path)


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k={k!r} is invalid; expected a positive int, e.g. k=9")
    return k


def interpret(ft: Any, x: Any, y: Any = None, *, batch_size: int = 64) -> Interpretation:
    """Run ``ft`` over labelled data once (with its calibrated temperature) and keep what the views need."""
    out = model_outputs(ft, x, y, batch_size=batch_size)
    if (out.labels < 0).any():
        raise DataError("interpret needs labelled images; expected labels for every image (y=, or a folder)")
    names = list(ft.class_names) if ft.class_names else [str(i) for i in range(ft.num_classes)]
    if len(names) != ft.num_classes:
        raise ConfigError(
            f"class_names has {len(names)} names for {ft.num_classes} classes; expected one each"
        )
    probs = softmax(out.logits, float(getattr(ft, "temperature", 1.0)))
    images = x if isinstance(x, np.ndarray) or hasattr(x, "numpy") else None
    return Interpretation(probs, out.labels, names, files=out.files, images=images, dataset=out.dataset)
