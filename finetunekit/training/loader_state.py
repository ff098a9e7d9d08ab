"""Putting a DataLoader back where an interrupted epoch left it, without loading the skipped batches.

A shuffling DataLoader draws everything random about an epoch when it is iterated: ``iter(loader)``
draws the workers' base seed from ``loader.generator`` (torch's global generator when it has none), then
the sampler draws the permutation from the same generator. So the generator state *at the start of the
epoch* determines the epoch's batches. To resume at batch ``k`` we put that state back, replay those two
draws exactly as torch makes them (the batch sampler yields index lists only: no image is loaded or
augmented), and serve batches ``k..`` from a one-epoch loader over the same dataset. Random
augmentation is seeded per sample (finetunekit.data.loaders.PerSampleSeeded), so it needs no position.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from finetunekit.data.loaders import draws_randomness

Tensors = dict[str, torch.Tensor]
_GEN = "epoch_start.generator"
_RNG = "epoch_start.torch_rng"


def generator_state(loader: Any) -> torch.Tensor | None:
    generator = getattr(loader, "generator", None)
    return generator.get_state() if isinstance(generator, torch.Generator) else None


def set_generator_state(loader: Any, state: torch.Tensor | None) -> None:
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator) and state is not None:
        generator.set_state(state)


def epoch_start_snapshot(loader: Any) -> Tensors:
    """The RNG states an epoch's shuffling depends on, taken before ``iter(loader)``."""
    snapshot = {_RNG: torch.get_rng_state()}
    state = generator_state(loader)
    if state is not None:
        snapshot[_GEN] = state
    return snapshot


def why_not_repositionable(loader: Any) -> str | None:
    """None when :func:`positioned` can resume ``loader`` mid-epoch exactly, else the reason."""
    if not isinstance(loader, DataLoader):
        return f"the training batches come from a {type(loader).__name__}, not a DataLoader"
    if isinstance(loader.dataset, IterableDataset):
        return "its dataset is an IterableDataset, whose position cannot be restored without re-reading it"
    if loader.batch_sampler is None:
        return "it has no batch sampler (batch_size=None), so its batches cannot be replayed"
    return None


_warned_workers = False


def positioned(loader: DataLoader[Any], snapshot: Tensors, skip: int) -> DataLoader[Any]:
    """Batches ``skip, skip + 1, ...`` of the epoch that started in ``snapshot``'s RNG state.

    Leaves ``loader.generator`` (or torch's global generator) where the full epoch leaves it, so the
    next epoch draws what it would have. The caller restores the global RNG afterwards.
    """
    global _warned_workers
    generator = loader.generator
    set_generator_state(loader, snapshot.get(_GEN))
    torch.set_rng_state(snapshot[_RNG])
    twin = torch.Generator()  # draws the same worker base seed as the original epoch did
    twin.set_state(generator.get_state() if generator is not None else torch.get_rng_state())
    torch.empty((), dtype=torch.int64).random_(generator=generator)  # iter(loader)'s base-seed draw
    batches = list(loader.batch_sampler)  # type: ignore[arg-type]  # index lists only: nothing is loaded
    if loader.num_workers > 0 and skip > 0 and not _warned_workers and draws_randomness(loader.dataset):
        _warned_workers = True
        warnings.warn(
            f"resuming mid-epoch with num_workers={loader.num_workers}: the batches are exactly those of the "
            "interrupted run, but your DataLoader's dataset draws random numbers inside worker processes, "
            "whose RNG streams restart for the rest of this epoch (later epochs are exact). Use "
            "num_workers=0, or pass the Dataset itself to fit (finetunekit seeds each sample), for a "
            "bitwise-exact resume.",
            RuntimeWarning,
            stacklevel=3,
        )
    workers = loader.num_workers
    return DataLoader(
        loader.dataset,
        batch_sampler=batches[skip:],
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers > 0 else None,
        generator=twin,
        prefetch_factor=loader.prefetch_factor if workers > 0 else None,
    )
