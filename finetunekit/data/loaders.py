"""Validation splits and DataLoaders: seeded, stratified, and never augmenting what is evaluated."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from finetunekit.data.datasets import ArrayImageDataset, FolderDataset, TransformedDataset
from finetunekit.data.prepare import PreparedData
from finetunekit.errors import ConfigError, DataError

_WORKERS_MIN_FILES = 512  # below this, starting worker processes costs more than decoding in-process


def _check_splittable(data: PreparedData, fraction: float) -> int:
    if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise DataError(
            f"validation_split={fraction!r}; expected a fraction strictly between 0 and 1, e.g. 0.1. "
            "Use validation_data=... for a separate set, or leave validation_split unset."
        )
    if data.loader is not None or data.dataset is None or data.num_samples is None:
        raise DataError(
            "validation_split needs data finetunekit can index (arrays, a Dataset or a folder), but x is a "
            "DataLoader; pass validation_data=<another DataLoader> instead."
        )
    n_val = round(data.num_samples * fraction)
    if n_val < 1 or n_val >= data.num_samples:
        raise DataError(
            f"validation_split={fraction} of {data.num_samples} samples leaves {n_val} for validation and "
            f"{data.num_samples - n_val} for training; both need at least one. Use more data or another "
            "fraction."
        )
    return n_val


def _stratified_take(counts: np.ndarray, n_val: int, rng: np.random.Generator) -> np.ndarray:
    """How many of each class go to validation: proportional (largest remainder, random ties), and never
    the last training sample of a class, so every class seen in validation is also trained on."""
    exact = counts * n_val / counts.sum()
    cap = np.maximum(counts - 1, 0)
    take = np.minimum(np.floor(exact).astype(np.int64), cap)
    order = np.lexsort((rng.random(len(counts)), -(exact - take)))
    for c in order[: max(0, n_val - int(take.sum()))]:
        take[c] += take[c] < cap[c]
    return take


def _split_indices(labels: np.ndarray | None, n: int, n_val: int, seed: int | None) -> np.ndarray:
    """Validation indices: stratified by label when labels are known, else a seeded random draw."""
    rng = np.random.default_rng(seed)
    if labels is not None:
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        take = _stratified_take(counts, n_val, rng)
        if take.sum() > 0:  # all-singleton classes cannot be stratified
            picks = [rng.choice(np.flatnonzero(inverse == c), k, replace=False) for c, k in enumerate(take)]
            return np.sort(np.concatenate(picks))
    return np.sort(rng.choice(n, n_val, replace=False))


def _take(dataset: Dataset[Any], indices: np.ndarray, evaluate: bool) -> Dataset[Any]:
    """``dataset`` restricted to ``indices``; ``evaluate`` switches augmentation off."""
    if isinstance(dataset, Subset):  # a split of a split: index the base directly
        indices = np.asarray(dataset.indices)[indices]
        dataset = dataset.dataset
    if evaluate and isinstance(dataset, ArrayImageDataset) and dataset.transform.augment:
        return dataset.select(indices, dataset.transform.with_augment(False))
    if evaluate and isinstance(dataset, TransformedDataset):
        dataset = dataset.with_transform(dataset.transform.with_augment(False))
    return Subset(dataset, indices.tolist())


def _part(data: PreparedData, indices: np.ndarray, evaluate: bool) -> PreparedData:
    assert data.dataset is not None
    labels = None if data.labels is None else data.labels[indices]
    return PreparedData(_take(data.dataset, indices, evaluate), None, labels, data.class_names, len(indices))


def split_validation(
    data: PreparedData, fraction: float, seed: int | None
) -> tuple[PreparedData, PreparedData]:
    """(train, validation) parts of ``data``, disjoint and covering it.

    Unlike Keras (which takes the last samples, so sorted data gives a one-class validation set), the
    split is random and stratified by label; ``seed`` makes it the same on every run.
    """
    n_val = _check_splittable(data, fraction)
    assert data.num_samples is not None
    val_idx = _split_indices(data.labels, data.num_samples, n_val, seed)
    train_idx = np.setdiff1d(np.arange(data.num_samples), val_idx, assume_unique=True)
    return _part(data, train_idx, evaluate=False), _part(data, val_idx, evaluate=True)


def _default_workers(dataset: Dataset[Any], num_samples: int | None) -> int:
    """Worker processes only pay off for decoding files; in-memory tensors are fastest in-process, and
    user Datasets may not survive pickling, so they stay in-process unless num_workers says otherwise."""
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    if isinstance(base, FolderDataset) and (num_samples or 0) >= _WORKERS_MIN_FILES:
        return max(0, min(4, (os.cpu_count() or 1) - 1))
    return 0


def _loader_seed(seed: int | None, shuffle: bool) -> int:
    """``seed``; else one draw from torch's global RNG when shuffling (so ``torch.manual_seed`` rules),
    and a fixed 0 for ordered loaders, which need no randomness and so leave the global RNG alone."""
    if seed is not None:
        return seed
    return int(torch.randint(0, 2**62, (1,)).item()) if shuffle else 0


def make_loader(
    data: PreparedData,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    drop_last: bool = False,
    num_workers: int | None = None,
    num_replicas: int = 1,
    rank: int = 0,
) -> DataLoader[Any]:
    """A DataLoader over ``data`` (or the user's own loader, untouched).

    Shuffling uses a dedicated generator seeded by ``seed`` (or drawn from torch's global RNG, so
    ``torch.manual_seed`` also makes it reproducible). Worker processes are seeded from that generator,
    so augmentation inside workers is reproducible too; in-process augmentation uses torch's global RNG.

    Shuffling goes through a DistributedSampler, with ``num_replicas=1`` in one process: epoch e is
    ``randperm(n)`` seeded ``seed + e`` (call ``loader.sampler.set_epoch(e)``; fit does), and rank r of
    a DDP job takes every ``num_replicas``-th index of that same permutation, so the ranks' batches at
    step k together are the single-process batch k (finetunekit.distributed).
    """
    if data.loader is not None:
        return data.loader
    if data.dataset is None:
        raise DataError("PreparedData has neither a dataset nor a loader; build it with prepare_data().")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}; expected a positive int such as 32.")
    generator = torch.Generator()
    generator.manual_seed(_loader_seed(seed, shuffle))
    workers = _default_workers(data.dataset, data.num_samples) if num_workers is None else num_workers
    sampler: DistributedSampler[Any] | None = None
    if shuffle or num_replicas > 1:  # [distributed] one permutation for 1 or N processes
        sampler = DistributedSampler(
            data.dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
            seed=int(generator.initial_seed()), drop_last=drop_last,
        )  # fmt: skip
    return DataLoader(
        data.dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=workers,
        generator=generator,
        pin_memory=torch.cuda.is_available(),
        # Persistent: workers start once per loader, not once per epoch (each start re-imports and
        # re-seeds; folders of images keep their decode cache in shared memory either way).
        persistent_workers=workers > 0,
    )
