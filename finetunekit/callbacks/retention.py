"""RetentionMonitor: how far has the backbone drifted from its pretrained self?

Each epoch (and on demand, e.g. after ``ft.interpolate``) it measures

* ``retention_feature_sim``: agreement of the pre-logits features of the current backbone with those of
  the pretrained backbone on a reference set the user supplies (images from the pretraining domain measure
  forgetting; target images measure adaptation). Linear CKA (Kornblith et al. 2019) by default: 1 means
  the same representation up to rotation and scale; "cosine" is the mean per-image cosine similarity.
* ``retention_weight_change``: ``||w - w0|| / ||w0||`` over all backbone parameters, and the same per
  layer group in :attr:`RetentionMonitor.per_group` (kept in the callback, not in the logs).

The pretrained reference features are computed once, from the FineTuner's pretrained snapshot (swapped in
for that pass), so the monitor gives the same baseline whenever it is attached.
"""

from __future__ import annotations

from typing import Any

import torch

from finetunekit.backbones.snapshot import pretrained_weights, relative_change
from finetunekit.callbacks.base import Callback, Logs
from finetunekit.data import make_loader
from finetunekit.data.features import model_features
from finetunekit.errors import ConfigError

SIMILARITIES = ("cka", "cosine")


def linear_cka(a: torch.Tensor, b: torch.Tensor) -> float:
    """Linear CKA between two (N, D) feature matrices of the same images (float64, centred)."""
    a = a.double() - a.double().mean(dim=0)
    b = b.double() - b.double().mean(dim=0)
    cross = (b.T @ a).pow(2).sum()
    norm = (a.T @ a).pow(2).sum().sqrt() * (b.T @ b).pow(2).sum().sqrt()
    return float(cross / norm) if float(norm) > 0 else 0.0


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=1).mean())


class RetentionMonitor(Callback):
    """``fit(..., callbacks=[RetentionMonitor(x_ref)])`` logs ``retention_feature_sim`` and
    ``retention_weight_change`` each epoch; ``history_by_group[name]`` holds per-group weight change."""

    log_keys = ("retention_feature_sim", "retention_weight_change")

    def __init__(self, reference_x: Any, similarity: str = "cka", batch_size: int = 64, every: int = 1):
        super().__init__()
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity={similarity!r} is unknown; expected one of {SIMILARITIES}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every={every!r} is invalid; expected an int >= 1 (measure every N epochs)")
        self.reference_x = reference_x
        self.similarity = similarity
        self.batch_size = batch_size
        self.every = every
        self.per_group: dict[str, float] = {}
        self.history_by_group: dict[str, list[float]] = {}
        self._reference: torch.Tensor | None = None
        self._loader: Any = None

    def _reference_loader(self, tuner: Any) -> Any:
        if self._loader is None:
            data = tuner._prepare(
                self.reference_x, None, augment=False, what="reference_x", require_labels=False
            )
            self._loader = make_loader(data, batch_size=self.batch_size, shuffle=False, seed=None)
        return self._loader

    def reference_features(self, tuner: Any) -> torch.Tensor:
        """Pre-logits features of the pretrained backbone on the reference set (computed once)."""
        if self._reference is None:
            with pretrained_weights(tuner):
                self._reference = model_features(tuner, self._reference_loader(tuner))
        return self._reference

    def measure(self, tuner: Any = None) -> dict[str, float]:
        """Similarity and weight change of ``tuner`` (default: the one training) right now."""
        tuner = tuner if tuner is not None else self.tuner
        ref = self.reference_features(tuner)
        now = model_features(tuner, self._reference_loader(tuner))
        sim = linear_cka(ref, now) if self.similarity == "cka" else mean_cosine(ref, now)
        overall, self.per_group = relative_change(tuner)
        return {"retention_feature_sim": sim, "retention_weight_change": overall}

    def on_train_begin(self, logs: Logs | None = None) -> None:
        self.reference_features(self.tuner)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if (epoch + 1) % self.every or logs is None:
            return
        logs.update(self.measure())
        for name, value in self.per_group.items():
            self.history_by_group.setdefault(name, []).append(value)
