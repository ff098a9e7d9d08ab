"""What :func:`finetunekit.data.prepare_data` hands the tuner, and what its helpers share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from finetunekit.data.transforms import ImageTransform
from finetunekit.tasks import CLASSIFICATION


@dataclass
class PreparedData:
    """What the tuner needs to build loaders and to reason about the data without iterating it."""

    dataset: Dataset[Any] | None  # None only when the user passed a DataLoader
    loader: DataLoader[Any] | None  # the user's own DataLoader, used as is
    labels: np.ndarray | None  # int64 indices or float32 target rows, when known without decoding images
    class_names: list[str] | None  # from folder names (or a dataset's ``classes``)
    num_samples: int | None
    files: list[str] | None = None  # the image files, in sample order, when the data is files
    sample_weights: np.ndarray | None = None  # fit(sample_weight=...): weights the loss per sample
    sampling_weights: np.ndarray | None = None  # fit(sampling_weights=...): a weighted sampler draws by them


@dataclass(frozen=True)
class Spec:
    """How one call wants its data: the transform, whether labels are required, the task."""

    transform: ImageTransform
    require_labels: bool
    num_classes: int | None
    what: str
    task: str = CLASSIFICATION
