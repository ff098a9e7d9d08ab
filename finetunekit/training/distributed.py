"""How fit, evaluate and predict run on one rank of a DDP job; in a single process every method is the
identity or a no-op, so the tuner calls the same lines either way.

Design (docs/distributed.md):

* ``batch_size`` stays the *global* batch (Keras semantics): each of N ranks takes ``batch_size / N``
  samples per step from a DistributedSampler whose permutation is the single-process one, so the union
  of the ranks' batches at step k is the single-process batch k and results do not depend on N.
* The DDP wrapper covers the parameters that train *now*. DDP registers its gradient hooks for
  ``requires_grad`` parameters at construction, so a strategy that unfreezes or refreezes a group gets a
  new wrapper at that epoch; no ``find_unused_parameters`` scan is ever paid.
* Evaluation shards are contiguous and unpadded; sums and counts are all-reduced, so no sample counts
  twice. Predictions are gathered in rank order, which is input order.
"""

from __future__ import annotations

import gc
import warnings
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from finetunekit.callbacks import Callback
from finetunekit.data import PreparedData, make_loader
from finetunekit.distributed import collectives, env
from finetunekit.errors import ConfigError


class DistributedRun:
    """One process's part in a job (``active``) or a single process (inactive: everything passes through)."""

    def __init__(self, active: bool, device: torch.device):
        self.active = active
        self.device = device
        self.rank = env.rank() if active else 0
        self.ddp: DistributedDataParallel | None = None
        self._ddp_key: tuple[int, tuple[bool, ...]] | None = None
        self.builds = 0  # DDP wrappers built so far: one per change of the trainable set
        self.built: list[weakref.ref[DistributedDataParallel]] = []  # each dead once released

    # ------------------------------------------------------------------------------------------ data
    def train_loader(
        self, data: PreparedData, batch_size: int, shuffle: bool, seed: int | None, **kwargs: Any
    ) -> DataLoader[Any]:
        """The training loader: this rank's ``batch_size / world`` share of each global batch."""
        if not self.active:
            return make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed, **kwargs)
        world = env.world_size()
        if data.loader is not None:
            _check_user_loader(data.loader)
            return data.loader
        if batch_size % world:
            low, high = batch_size // world * world, (batch_size // world + 1) * world
            raise ConfigError(
                f"batch_size={batch_size} is the global batch (Keras semantics) and must split evenly over "
                f"the {world} processes; use {high}" + (f" or {low}" if low else "")
            )
        if seed is None and shuffle:  # every rank must shuffle alike: rank 0 draws for all
            seed = collectives.broadcast_object(int(torch.randint(0, 2**62, (1,)).item()))
        return make_loader(
            data, batch_size=batch_size // world, shuffle=shuffle, seed=seed,
            num_replicas=world, rank=env.rank(), **kwargs,
        )  # fmt: skip

    def eval_loader(self, data: PreparedData, batch_size: int, **kwargs: Any) -> DataLoader[Any]:
        """Evaluation/prediction loader over this rank's contiguous shard (a user's DataLoader runs
        whole on every rank: its results are then the same everywhere, and reducing them changes nothing)."""
        if not self.active or data.dataset is None:
            return make_loader(data, batch_size=batch_size, shuffle=False, seed=None, **kwargs)
        return make_loader(self.shard(data), batch_size=batch_size, shuffle=False, seed=None, **kwargs)

    def shard(self, data: PreparedData) -> PreparedData:
        """``data`` restricted to this rank's contiguous, unpadded part."""
        assert data.dataset is not None and data.num_samples is not None
        part = collectives.shard_range(data.num_samples)
        labels = None if data.labels is None else data.labels[part.start : part.stop]
        return replace(data, dataset=Subset(data.dataset, list(part)), labels=labels, num_samples=len(part))

    def gather_rows(self, rows: np.ndarray, data: PreparedData) -> np.ndarray:
        """Every rank's predictions in input order, on every rank (sharded data only)."""
        if not self.active or data.dataset is None:
            return rows
        return collectives.gather_rows(rows)

    def shared_seed(self, seed: int | None) -> int | None:
        """``seed``, or under DDP without one, a seed drawn on rank 0 for every rank: random choices that
        must agree across ranks (the validation split) cannot use each rank's own unseeded RNG."""
        if seed is not None or not self.active:
            return seed
        return collectives.broadcast_object(int(torch.randint(0, 2**62, (1,)).item()))

    @staticmethod
    def set_epoch(loader: Any, epoch: int) -> None:
        """``sampler.set_epoch``: the shuffle of epoch e is ``randperm`` seeded ``seed + e``, with or
        without DDP, and for a user's DataLoader with a DistributedSampler too; ``dataset.set_epoch``:
        augmentation of sample i in epoch e is seeded by (seed, e, i) (finetunekit.data.loaders)."""
        for owner in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
            set_epoch = getattr(owner, "set_epoch", None)  # the dataset's: per-sample augmentation seeds
            if callable(set_epoch):
                set_epoch(epoch)

    def seed_ranks(self, seed: int | None) -> None:
        """Give each rank its own stream for augmentation and dropout (``seed + rank``); with one
        stream every rank would flip and crop its i-th sample alike."""
        if self.active and seed is not None and env.rank() > 0:
            torch.manual_seed(seed + env.rank())
            np.random.seed((seed + env.rank()) % 2**32)

    # ----------------------------------------------------------------------------------------- model
    def bind_model(self, model: nn.Module) -> nn.Module:
        """What the training step calls: ``model``, or under DDP a wrapper over its currently trainable
        parameters, rebuilt only when that set changed since the last call.

        The old wrapper is released *before* the new one is built: its reducer hooks the same
        parameters, and two live reducers would both fire in backward.
        """
        if not self.active:
            return model
        key = (id(model), tuple(p.requires_grad for p in model.parameters()))
        if self.ddp is not None and key == self._ddp_key:
            return self.ddp
        self.release()
        if not any(key[1]):  # DDP refuses a module with nothing to train; then there is nothing to sync
            return model
        cuda = self.device.type == "cuda"
        self.ddp = DistributedDataParallel(
            model, device_ids=[self.device] if cuda else None, find_unused_parameters=False
        )  # buffers (BN statistics) follow rank 0 at each forward: DDP's default
        self._ddp_key = key
        self.builds += 1
        self.built.append(weakref.ref(self.ddp))
        return self.ddp

    def release(self) -> None:
        """Drop the DDP wrapper (its gradient hooks and buckets) now rather than at some later
        collection: before building the next one, and when fit ends."""
        if self.ddp is not None:
            self.ddp = None
            self._ddp_key = None
            gc.collect()

    def run_on_main(self, fn: Callable[[], Any], what: str) -> Any:
        """``fn()`` once per job (rank 0, every rank waiting; see collectives.run_on_main), or plainly in a
        process that trains alone (also ``distributed=False`` under torchrun: each process saves its own)."""
        return collectives.run_on_main(fn, what) if self.active else fn()

    def end_epoch(self, model: nn.Module) -> None:
        """After an epoch's steps: every rank takes rank 0's buffers (BatchNorm statistics), so
        validation, saves and predictions agree bitwise across ranks."""
        if self.active:
            collectives.broadcast_state(model, buffers_only=True)

    def callbacks(self) -> list[Callback]:
        """Callbacks fit appends last: ranks agree on ``stop_training``."""
        return [StopSync()] if self.active else []


class StopSync(Callback):
    """After every batch and epoch, ``stop_training`` becomes True on all ranks if it is on any.

    A stop requested on one rank only (TerminateOnNaN seeing its local loss, a user callback) would
    otherwise leave the other ranks waiting in the next step's gradient all-reduce. One int over the
    CPU control group per step; it runs last, after every callback that could set the flag.
    """

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.stop_training = collectives.any_rank(self.tuner.stop_training)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.tuner.stop_training = collectives.any_rank(self.tuner.stop_training)


def _check_user_loader(loader: DataLoader[Any]) -> None:
    if not isinstance(loader.sampler, DistributedSampler):
        warnings.warn(
            "fit got a DataLoader without a DistributedSampler under DDP: every process iterates all of "
            "it, so each step repeats the same samples on every rank. Pass arrays, a Dataset or a folder "
            "(finetunekit shards them), or give the loader a DistributedSampler.",
            RuntimeWarning,
            stacklevel=4,
        )


def run_for(tuner: Any) -> DistributedRun:
    """The tuner's DistributedRun, set up on first use: resolves ``FineTuner(distributed=...)``, starts
    the process group when needed, converts BatchNorm for ``sync_bn=True`` and makes every rank hold rank
    0's weights (heads initialised without a seed differ per rank until then)."""
    if getattr(tuner, "distributed", None) == "fsdp":  # FSDP2 sharding: finetunekit.training.fsdp
        from finetunekit.training.fsdp import fsdp_run

        return fsdp_run(tuner)
    run: DistributedRun | None = getattr(tuner, "_distributed_run", None)
    if run is not None and (not run.active or env.is_initialized()) and run.device == tuner.device:
        return run
    active = env.wants_distributed(getattr(tuner, "distributed", None))
    if active:
        env.init(tuner.device)
        if getattr(tuner, "sync_bn", False):
            _convert_sync_bn(tuner)
        collectives.broadcast_state(tuner.model)
    run = DistributedRun(active, tuner.device)
    tuner._distributed_run = run
    return run


def _convert_sync_bn(tuner: Any) -> None:
    """SyncBatchNorm reduces batch statistics over ranks, so trainable BN sees the global batch."""
    from finetunekit.strategies.apply import norm_modules_by_group

    if tuner.device.type == "cpu":
        raise ConfigError(
            "sync_bn=True needs GPUs: torch's SyncBatchNorm only synchronises CUDA tensors, and this run is "
            "on the CPU (gloo). Use sync_bn=False (each rank normalises its own batch share), freeze the "
            "BatchNorm groups, or train on CUDA"
        )
    tuner.model = nn.SyncBatchNorm.convert_sync_batchnorm(tuner.model)
    # The conversion replaces the BN modules (parameters and buffers are shared), so the per-group
    # BN lists that keep frozen groups in eval mode must point at the new ones.
    tuner._norms_by_group = norm_modules_by_group(tuner.model, tuner._backbone.groups)
