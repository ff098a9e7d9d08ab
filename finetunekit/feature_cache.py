"""Frozen-prefix feature cache: when only the head trains, run the frozen backbone once, not every epoch.

While a phase trains only the head (``FrozenBackbone``, the probe phase of ``LPFT``, epoch 0 of
``GradualUnfreeze``) and the training images are the same every epoch (no augmentation), the backbone maps
each sample to the same features every epoch. We compute the input of the head once per sample (in
eval mode, without gradients) and train a small *suffix* module on them: the parameter-free modules right
before the head (a torchvision classifier's ``Dropout``), timm's functional head dropout (``drop_rate``),
and the head itself. Batches are drawn in exactly the order the real loader would draw them (the same
sampler and generator draws), so the head sees the same batches, the same dropout masks and the same
LRs: results equal the uncached path to float tolerance.

Exactness is not assumed, it is checked on the first batch: the model's own output must equal
``suffix(cached)`` in eval mode, and in train mode (frozen BatchNorm in eval, buffers restored after) under
the same RNG seed. That catches stochastic depth or dropout inside the frozen layers, BatchNorm of the
frozen layers that trains, heads whose output the model post-processes, and anything else we did not
foresee; when a check fails, or augmentation is on, or the data is the user's own DataLoader, the cache
switches itself off and says why in ``summary()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Subset

from finetunekit.strategies import Plan

MAX_CACHE_BYTES = 2 * 2**30  # features above this stay uncached (e.g. huge data sets on a small GPU)
_CHECK_SAMPLES = 8  # the train-mode check runs on this many samples of the first batch
DEFAULT_STATUS = "decided by fit(): used in epochs where only the head trains and augmentation is off"


class HeadSuffix(nn.Module):
    """What runs on cached features: parameter-free modules before the head, timm's head dropout, head."""

    def __init__(self, pre: Sequence[nn.Module], dropout_p: float, head: nn.Module) -> None:
        super().__init__()
        self.pre = nn.ModuleList(pre)
        self.dropout_p = dropout_p
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.pre:
            x = module(x)
        if self.dropout_p > 0:
            x = F.dropout(x, self.dropout_p, self.training)
        return self.head(x)


def build_suffix(model: nn.Module, head_path: str) -> tuple[nn.Module, HeadSuffix]:
    """(module whose input is cached, suffix): in a Sequential, parameter-free siblings just before the
    head (Dropout, Flatten) join the suffix, so they run live on the cached features."""
    head = model.get_submodule(head_path)
    parent_path, _, name = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    pre: list[nn.Module] = []
    if isinstance(parent, nn.Sequential):
        children = list(parent.named_children())
        index = [n for n, _ in children].index(name)
        while index > 0 and not any(True for _ in children[index - 1][1].parameters()):
            index -= 1
            pre.insert(0, children[index][1])
    return (pre[0] if pre else head), HeadSuffix(pre, _timm_head_dropout(model), head)


def _timm_head_dropout(model: nn.Module) -> float:
    """timm applies its head dropout between pooling and classifier, functionally (``drop_rate``, CNNs)
    or as a ``head_drop`` module (ViTs); the suffix replays it. The train-mode check confirms the guess."""
    if not hasattr(model, "forward_head"):
        return 0.0
    head_drop = getattr(model, "head_drop", None)
    if isinstance(head_drop, nn.Dropout):
        return float(head_drop.p)
    drop = getattr(model, "drop_rate", 0.0)
    return float(drop) if isinstance(drop, (int, float)) else 0.0


def _base_dataset(dataset: Any) -> Any:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def only_head_trains(plan: Plan) -> bool:
    return plan[-1] is not None and all(s is None for s in plan[:-1])


def static_reason(loader: Any, train_bn: bool, enabled: bool, user_loader: bool) -> str | None:
    """Why the cache cannot be used in an epoch where only the head trains, or None when it may be."""
    if not enabled:
        return "off: fit(cache_features=False)"
    if train_bn:
        return "off: train_bn=True, so the frozen layers' BatchNorm statistics change every step"
    if user_loader or not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        return "off: the training data is your own DataLoader, which finetunekit cannot index per sample"
    base = _base_dataset(loader.dataset)
    transform = getattr(base, "transform", None)
    if transform is None or getattr(transform, "augment", True):
        return "off: augmentation is on (random crops change what the backbone sees every epoch)"
    user = getattr(base, "dataset", None)
    if user is not None and (getattr(user, "transform", None) or getattr(user, "transforms", None)):
        return "off: your Dataset has its own transform, which may be random"
    return None


class CachedBatches:
    """(features, labels) batches in the order ``loader`` would yield samples this epoch.

    The DataLoader iterator draws one seed from the loader's generator before its sampler shuffles; we
    draw it too, so the shuffle order (and every later epoch's) is the one the uncached run sees.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, loader: DataLoader[Any]) -> None:
        self.features, self.labels, self.loader = features, labels, loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        torch.empty((), dtype=torch.int64).random_(generator=self.loader.generator)
        assert self.loader.batch_sampler is not None
        batches = [list(b) for b in self.loader.batch_sampler]
        # One host-to-device copy of the epoch's order, not one (stream-ordered, so syncing) per batch.
        order = torch.as_tensor([i for b in batches for i in b], dtype=torch.int64)
        order = order.to(self.features.device, non_blocking=True)
        start = 0
        for b in batches:
            index = order[start : start + len(b)]
            start += len(b)
            yield self.features.index_select(0, index), self.labels.index_select(0, index)


class FeatureCache:
    """One fit's cache of the head's inputs for the training (and validation) data."""

    def __init__(
        self,
        model: nn.Module,
        head_path: str,
        head_params: Sequence[nn.Parameter],
        set_frozen_norms: Callable[[Plan], None],
        autocast: Callable[[], AbstractContextManager[Any]] | None = None,
        reason: str | None = None,
        cache_validation: bool = True,
    ) -> None:
        self.model = model
        self.cache_at, self.suffix = build_suffix(model, head_path)
        self._head_complete = {id(p) for p in head_params} == {id(p) for p in self.suffix.parameters()}
        self._set_frozen_norms = set_frozen_norms
        self._autocast = autocast or nullcontext
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._plan: Plan = []
        self.failed: str | None = None if self._head_complete else "off: the head has several parts"
        self.used_epochs: list[int] = []
        self.reason = reason  # why it is not used, for summary(); a static reason disables it for the fit
        self.cache_validation = cache_validation
        self.info = ""

    def invalidate(self) -> None:
        """Frozen weights are about to change (a group unfroze): cached features are stale for good."""
        self._store.clear()

    def features_for(
        self, loader: DataLoader[Any], device: torch.device, check: bool, plan: Plan
    ) -> CachedBatches | None:
        """Cached batches for ``loader`` (built on first use), or None when a check failed."""
        self._plan = plan
        if self.failed:
            return None
        key = id(loader)
        if key not in self._store:
            built = self._build(loader, device, check)
            if built is None:
                return None
            self._store[key] = built
        features, labels = self._store[key]
        return CachedBatches(features, labels, loader)

    @torch.no_grad()
    def _capture(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the cache point's input, the model's output) for one batch, in the model's current mode."""
        seen: list[torch.Tensor] = []
        handle = self.cache_at.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
        try:
            with self._autocast():
                out = self.model(x)
        finally:
            handle.remove()
        if len(seen) != 1:
            raise _NotExact(f"off: the head ran {len(seen)} times in one forward pass")
        return seen[0], out

    def _build(self, loader: DataLoader[Any], device: torch.device, check: bool) -> Any:
        # Its own generator: iterating it must not draw from the RNG the run's dropout uses.
        ordered = DataLoader(loader.dataset, batch_size=loader.batch_size or 32, shuffle=False,
                             num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                             generator=torch.Generator())  # fmt: skip
        was_training = self.model.training
        feats, labels, total = [], [], 0
        try:
            for i, (x, y) in enumerate(ordered):
                x = x.to(device)
                self.model.eval()
                f, out = self._capture(x)
                if i == 0 and check:  # a few samples suffice: frozen BN and dropout act per sample
                    self._check(x[:_CHECK_SAMPLES], f[:_CHECK_SAMPLES], out[:_CHECK_SAMPLES])
                total += f.numel() * f.element_size()
                if total > MAX_CACHE_BYTES:
                    raise _NotExact(f"off: the features would take more than {MAX_CACHE_BYTES / 2**30:g} GiB")
                feats.append(f)
                labels.append(y.to(device))
        except _NotExact as e:
            self.failed = str(e)
            return None
        finally:
            self.model.train(was_training)
        out = torch.cat(feats)
        self.info = f"{out[0].numel()} values per sample, {out.numel() * out.element_size() / 2**20:.1f} MiB"
        return out, torch.cat(labels)

    def _check(self, x: torch.Tensor, cached: torch.Tensor, out: torch.Tensor) -> None:
        """The suffix on ``cached`` (captured in eval mode, where the model gave ``out``) must give the
        model's own output, in eval and in train mode."""
        self.suffix.eval()
        with torch.no_grad(), self._autocast():
            if not _close(out, self.suffix(cached)):
                raise _NotExact("off: the model's output is not the head applied to its input")
        buffers = {k: b.clone() for k, b in self.model.named_buffers()}
        seed = 20240229  # fixed, inside fork_rng: the check must not advance the RNG the run uses
        try:
            self.model.train()
            self._set_frozen_norms(self._plan)
            with torch.random.fork_rng(devices=_rng_devices(x)):
                torch.manual_seed(seed)
                _, out_train = self._capture(x)
            self.suffix.train()
            with torch.random.fork_rng(devices=_rng_devices(x)), torch.no_grad(), self._autocast():
                torch.manual_seed(seed)
                out_suffix = self.suffix(cached)
        finally:
            self.model.load_state_dict(buffers, strict=False)
        if not _close(out_train, out_suffix):
            raise _NotExact(
                "off: the frozen layers act differently in train mode (dropout or stochastic depth in them, "
                "or BatchNorm that is not frozen)"
            )


class _NotExact(Exception):
    """The cache would change results; the message is the summary() line."""


def _rng_devices(x: torch.Tensor) -> list[Any]:
    return [x.device] if x.device.type == "cuda" else []


def _close(a: Any, b: Any) -> bool:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape != b.shape:
        return False
    tol = 1e-4 if a.dtype in (torch.float32, torch.float64) else 2e-2
    scale = float(b.detach().abs().max()) if b.numel() else 0.0  # relative: random-init outputs can be ~1e-14
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * max(scale, 1e-30)))


class EpochInputs(NamedTuple):
    """What one epoch trains and validates on: the full model and loaders, or the suffix and caches."""

    ctx: Any
    loader: Any
    val_model: nn.Module
    val_loader: Any


def epoch_inputs(
    cache: FeatureCache | None,
    ctx: Any,
    loader: Any,
    val_loader: Any,
    plan: Plan,
    epoch: int,
    val_model: nn.Module,
) -> EpochInputs:
    """The one place fit decides, per epoch, whether it trains on cached features."""
    full = EpochInputs(ctx, loader, val_model, val_loader)
    if cache is None or not only_head_trains(plan):
        if cache is not None:
            cache.invalidate()
        return full
    if cache.reason is not None:
        return full
    batches = cache.features_for(loader, ctx.device, check=True, plan=plan)
    if batches is None:
        cache.reason = cache.failed
        return full
    cache.used_epochs.append(epoch)
    out = EpochInputs(replace(ctx, model=cache.suffix), batches, val_model, val_loader)
    if val_loader is not None and val_model is cache.model and cache.cache_validation:
        val_batches = cache.features_for(val_loader, ctx.device, check=False, plan=plan)
        if val_batches is not None:
            out = out._replace(val_model=cache.suffix, val_loader=val_batches)
    return out


def cache_status(cache: FeatureCache | None) -> str:
    """The summary() line: where the cache was used, or why not."""
    if cache is None:
        return DEFAULT_STATUS
    if cache.used_epochs:
        epochs = ", ".join(str(e) for e in cache.used_epochs)
        return f"on in epochs {epochs}: the head trained on cached backbone features ({cache.info})"
    return cache.reason or "not used: more than the head trains in every epoch"
