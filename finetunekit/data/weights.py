"""Class imbalance: weighting the loss per sample (Keras' ``class_weight`` / ``sample_weight``) and
drawing samples by weight (fastai's ``weighted_dataloaders``).

Loss weighting follows Keras: the batch loss is ``sum_i w_i * loss_i / batch_size`` (not divided by
the sum of the weights, as ``nn.CrossEntropyLoss(weight=...)`` does), so a weight of 2 on every sample
doubles the loss and its gradient. ``class_weight`` becomes the per-sample weight ``w_i =
class_weight[y_i]``; both go through :class:`LossWeighting`, one implementation. Validation losses are
never weighted (Keras).

The weighted sampler draws epoch ``e`` with replacement from a generator seeded ``seed + e``, so an
epoch's draw depends only on the fit's seed and the epoch: a resumed run and every DDP rank see it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from finetunekit.errors import ConfigError, DataError
from finetunekit.tasks import CLASSIFICATION

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def balanced_weights(labels: np.ndarray | None, num_classes: int, what: str) -> np.ndarray:
    """sklearn's ``compute_class_weight("balanced")``: ``n_samples / (n_classes * count[c])`` over the
    classes present (absent classes get 1)."""
    if labels is None or labels.ndim != 1:
        raise ConfigError(
            f'{what}="balanced" needs the class labels up front (arrays, folders, CSVs, or a Dataset with '
            ".targets); pass a dict {class_index: weight} instead."
        )
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights


def class_weight_vector(
    class_weight: Any, labels: np.ndarray | None, num_classes: int, task: str
) -> torch.Tensor:
    """``"balanced"`` or ``{class_index: weight}`` (missing classes weigh 1, as in Keras) -> (C,) weights."""
    if task != CLASSIFICATION:
        raise ConfigError(
            f"class_weight applies to single-label classification, not task={task!r}; for multi-label "
            "imbalance pass loss=torch.nn.BCEWithLogitsLoss(pos_weight=...) or sample_weight=."
        )
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ConfigError(f"class_weight={class_weight!r} is unknown; expected 'balanced' or a dict.")
        return torch.as_tensor(balanced_weights(labels, num_classes, "class_weight"), dtype=torch.float32)
    if not isinstance(class_weight, Mapping):
        raise ConfigError(
            f"class_weight={class_weight!r} is invalid; expected 'balanced' or a dict "
            "{class_index: weight}."
        )
    vector = torch.ones(num_classes)
    for key, value in class_weight.items():
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not 0 <= int(key) < num_classes:
            raise ConfigError(f"class_weight has key {key!r}; expected class indices 0..{num_classes - 1}.")
        _check_weight(value, f"class_weight[{key}]")
        vector[int(key)] = float(value)
    return vector


def _check_weight(value: Any, name: str) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.number))
        or not 0 <= value < float("inf")
    ):
        raise ConfigError(f"{name}={value!r} is invalid; expected a finite number >= 0.")


def check_sample_weights(weights: Any, num_samples: int | None, name: str) -> np.ndarray:
    """A (N,) float32 array of finite weights >= 0, one per training sample."""
    array = np.asarray(
        weights.detach().cpu() if isinstance(weights, torch.Tensor) else weights, dtype=np.float64
    )
    if array.ndim != 1 or (num_samples is not None and len(array) != num_samples):
        raise DataError(
            f"{name} has shape {array.shape}; expected one weight per training sample, shape "
            f"({num_samples},)."
        )
    if not np.isfinite(array).all() or (array < 0).any():
        raise DataError(f"{name} has negative, NaN or infinite values; expected finite weights >= 0.")
    if num_samples is None:
        raise DataError(f"{name} needs data finetunekit can index (arrays, a Dataset, files), not a stream.")
    return array.astype(np.float32)


class WeightedSamples(Dataset[Any]):
    """``(image, target, weight)`` items: a training set with ``sample_weight``."""

    def __init__(self, dataset: Dataset[Any], weights: np.ndarray) -> None:
        self.dataset, self.weights = dataset, torch.as_tensor(weights, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, index: int) -> tuple[Any, Any, torch.Tensor]:
        image, target = self.dataset[index][:2]
        return image, target, self.weights[index]

    def set_epoch(self, epoch: int) -> None:
        """Forwarded, so per-sample augmentation seeds (PerSampleSeeded) follow the epoch."""
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)

    def __getitems__(self, indices: list[int]) -> list[tuple[Any, Any, torch.Tensor]]:
        fetch = getattr(self.dataset, "__getitems__", None)
        items = fetch(indices) if fetch is not None else [self.dataset[i] for i in indices]
        return [(item[0], item[1], self.weights[i]) for item, i in zip(items, indices, strict=True)]


class WeightedEpochSampler(Sampler[int]):
    """Draws ``len(weights)`` indices per epoch with replacement, probability proportional to weight.
    Rank ``r`` of ``num_replicas`` takes every ``num_replicas``-th draw, so the ranks together draw what
    one process would."""

    def __init__(self, weights: np.ndarray, *, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if not bool((self.weights > 0).any()):
            raise DataError("sampling_weights are all 0; expected some positive weights.")
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.total = -(-len(self.weights) // num_replicas) * num_replicas

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total // self.num_replicas

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draws = torch.multinomial(self.weights, self.total, replacement=True, generator=generator)
        return iter(draws[self.rank :: self.num_replicas].tolist())


def sampling_weights(
    value: Any, labels: np.ndarray | None, num_classes: int, num_samples: int | None
) -> np.ndarray:
    """``fit(sampling_weights=...)``: ``"balanced"`` (each class drawn equally often) or per-sample
    weights."""
    if isinstance(value, str):
        if value != "balanced":
            raise ConfigError(f"sampling_weights={value!r} is unknown; expected 'balanced' or an array.")
        if labels is None or labels.ndim != 1:
            raise ConfigError(
                'sampling_weights="balanced" needs single-label class labels up front; pass an array of '
                "per-sample weights instead."
            )
        counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
        return (1.0 / counts[labels]).astype(np.float32)
    return check_sample_weights(value, num_samples, "sampling_weights")


def per_sample_loss(loss_fn: Any) -> LossFn:
    """A copy of a loss module with ``reduction="none"``; weighting needs one loss per sample."""
    if not hasattr(loss_fn, "reduction"):
        raise ConfigError(
            f"class_weight/sample_weight need a loss that can return one value per sample, but {loss_fn!r} "
            "has no `reduction`; use a built-in loss name, a torch.nn loss module, or weight inside your "
            "loss."
        )
    twin = copy.deepcopy(loss_fn)
    twin.reduction = "none"
    return twin


class LossWeighting:
    """The one place a training loss is weighted: ``sum(w_i * loss_i) / batch_size``."""

    def __init__(self, loss_fn: Any, class_weights: torch.Tensor | None) -> None:
        self.per_sample = per_sample_loss(loss_fn)
        self.class_weights = class_weights

    def weights(self, target: torch.Tensor, sample: torch.Tensor | None) -> torch.Tensor | None:
        if sample is not None:
            return sample
        if self.class_weights is None:
            return None
        table = self.class_weights.to(target.device)
        if target.is_floating_point():  # soft targets from mixup/CutMix: the expected class weight
            return target.float() @ table
        return table[target]

    def __call__(
        self, logits: torch.Tensor, target: torch.Tensor, sample: torch.Tensor | None
    ) -> torch.Tensor:
        losses = self.per_sample(logits, target)
        losses = losses.reshape(len(losses), -1).mean(1) if losses.ndim > 1 else losses
        weights = self.weights(target, sample)
        if weights is None:
            return losses.mean()
        return (losses * weights.to(losses.dtype)).sum() / len(losses)


class Imbalance:
    """fit's ``class_weight``, ``sample_weight`` and ``sampling_weights``, checked before training.

    ``attach`` puts the per-sample arrays on the prepared training data before any validation split
    (so a split takes their share along); ``loss_weighting`` is what the training loop weights with.
    """

    def __init__(self, class_weight: Any, sample_weight: Any, sampling: Any, num_classes: int, task: str):
        if class_weight is not None and sample_weight is not None:
            raise ConfigError(
                "class_weight and sample_weight were both given; expected one of them (as in Keras). Fold "
                "the class weights into sample_weight: sample_weight * class_weight_array[y]."
            )
        if class_weight is not None and task != CLASSIFICATION:
            class_weight_vector(class_weight, None, num_classes, task)  # raises the task error
        self.class_weight, self.sample_weight, self.sampling = class_weight, sample_weight, sampling
        self.num_classes, self.task = num_classes, task

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.class_weight, self.sample_weight, self.sampling))

    def attach(self, train: Any) -> Any:
        """``train`` (a PreparedData) with ``sample_weights`` / ``sampling_weights`` set."""
        if self.sample_weight is not None:
            if train.dataset is None:
                raise DataError("sample_weight needs arrays, a Dataset or files, not a DataLoader or stream.")
            train.sample_weights = check_sample_weights(
                self.sample_weight, train.num_samples, "sample_weight"
            )
        if self.sampling is not None:
            if train.dataset is None or train.num_samples is None:
                raise DataError(
                    "sampling_weights needs arrays, a Dataset or files, not a DataLoader or stream."
                )
            train.sampling_weights = sampling_weights(
                self.sampling, train.labels, self.num_classes, train.num_samples
            )
        return train

    def loss_weighting(self, train: Any, loss_fn: Any) -> LossWeighting | None:
        """The weighting of the training loss, or None when the loss is unweighted."""
        if self.class_weight is None and self.sample_weight is None:
            return None
        table = None
        if self.class_weight is not None:
            table = class_weight_vector(self.class_weight, train.labels, self.num_classes, self.task)
        return LossWeighting(loss_fn, table)
