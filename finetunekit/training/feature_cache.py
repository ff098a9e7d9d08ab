"""Frozen-prefix feature cache: while the bottom layer groups stay frozen, run them once, not every epoch.

While a phase keeps the bottom groups frozen (``FrozenBackbone``, the probe phase of ``LPFT``, the early
phases of ``GradualUnfreeze``, any plan whose first groups are ``None``) and the training images are the
same every epoch (no augmentation), the frozen prefix maps each sample to the same tensor every epoch. We
compute that tensor once per sample (in eval mode, without gradients) and train the rest of the model on
it; ``finetunekit.training.cache_cuts`` decides where the model is cut (the head's input when only the head
trains,
else the output of the last frozen module before the first trainable one). Batches are drawn in exactly
the order the real loader would draw them (the same sampler and generator draws), so the trainable layers
see the same batches, the same dropout masks and the same LRs: results equal the uncached path to float
tolerance.

Exactness is not assumed, it is checked on a few samples of the first batch: the suffix on the cached
tensors must give the model's own output in eval mode, and in train mode (frozen BatchNorm in eval,
buffers restored after) the same output *and the same gradients* for every trainable parameter under the
same RNG seed. That catches stochastic depth or dropout inside the frozen layers, BatchNorm of the frozen
layers that trains, skip connections across the cut, heads whose output the model post-processes, and
anything else we did not foresee. When a check fails, or augmentation is on, or the data is the user's
own DataLoader, the cache switches itself off and says why in ``summary()``.

A cache is only built when the same layers stay frozen for at least two epochs: building it costs one
pass of the frozen prefix, the same as one uncached epoch, so a one-epoch phase would gain nothing.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from itertools import groupby
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from finetunekit.data.loaders import PerSampleSeeded
from finetunekit.strategies import Plan
from finetunekit.strategies.lora import has_adapters
from finetunekit.training.cache_cuts import Cut, NotExact, head_cut, prefix_cut

MAX_CACHE_BYTES = 2 * 2**30  # features above this stay uncached (e.g. huge data sets on a small GPU)
_CHECK_SAMPLES = 8  # the exactness check runs on this many samples of the first batch
# LoRA: the last frozen layers before the first adapter (its frozen base layer, the block's norm) run
# inside the adapted block, whose input skips past them; the earlier cuts are tried, the first exact wins.
_EARLIER_CUTS = 3
DEFAULT_STATUS = (
    "decided by fit(): used while the bottom layer groups stay frozen for two epochs or more and "
    "augmentation is off"
)
Key = tuple[bool, ...]  # which groups are frozen: a cache is valid while this stays the same


def _base_dataset(dataset: Any) -> Any:
    while isinstance(dataset, (Subset, PerSampleSeeded)):
        dataset = dataset.dataset
    return dataset


def frozen_key(plan: Plan | None) -> Key | None:
    """The plan's frozen pattern when its bottom group is frozen and something trains, else None."""
    if not plan or plan[0] is not None or all(s is None for s in plan):
        return None
    return tuple(s is None for s in plan)


def only_head_trains(plan: Plan) -> bool:
    return plan[-1] is not None and all(s is None for s in plan[:-1])


def disabled_reason(
    cache_features: bool, distributed: bool, mixing: bool, resizing: bool = False
) -> str | None:
    """fit's own reasons to keep the cache off for the whole run."""
    if not cache_features:
        return "fit(cache_features=False)"
    if distributed:
        return "training is distributed (DDP wraps the whole model, not the cached suffix)"
    if mixing:
        return "mixup/CutMix is on (the features of mixed images are not mixed features)"
    if resizing:
        return "progressive resizing is on (features differ at every training size)"
    return None


def static_reason(loader: Any, train_bn: bool, disabled: str | None, user_loader: bool) -> str | None:
    """Why the cache cannot be used in any epoch of this fit, or None when it may be. ``disabled`` is
    fit's own reason (cache_features=False, DDP, mixup)."""
    if disabled:
        return f"off: {disabled}"
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


class _Stop(BaseException):
    """Raised by the capture hook to end a forward pass at the cut (BaseException: no model's
    ``except Exception`` fallback may swallow it)."""


class FeatureCache:
    """One fit's cache of the frozen prefix's outputs for the training (and validation) data."""

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
        self._head_path = head_path
        self._head_params = {id(p) for p in head_params}
        self._set_frozen_norms = set_frozen_norms
        self._autocast = autocast or nullcontext
        self.reason = reason  # why it is off for the whole fit, for summary()
        self.cache_validation = cache_validation
        self.outcomes: dict[int, tuple[str, str]] = {}  # epoch -> ("on" | "off" | "not used", why)
        self._plan: Plan = []
        self._key: Key | None = None
        self._cut: Cut | None = None
        self._store: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._failed: dict[Key, str] = {}
        self._info = ""

    def batches_for_epoch(
        self, epoch: int, plan: Plan, next_plan: Plan | None, loader: DataLoader[Any], device: torch.device
    ) -> CachedBatches | None:
        """Cached training batches for this epoch, or None (the outcome is recorded for summary())."""
        key = frozen_key(plan)
        if key != self._key:  # other layers frozen: the cached tensors are for another cut, or stale
            self._key, self._cut, self._store = key, None, {}
        if key is None:
            return None
        self._plan = plan
        if key not in self._failed and not self._store and frozen_key(next_plan) != key:
            self.outcomes[epoch] = ("not used", "these layers stay frozen for one epoch only, so caching "
                                    "would save nothing")  # fmt: skip
            return None
        batches = self.features_for(loader, device)
        if batches is None:
            self.outcomes[epoch] = ("off", self._failed[key])
            return None
        assert self._cut is not None
        self.outcomes[epoch] = ("on", f"{self._cut.where} ({self._info})")
        return batches

    def note_resumed(self, epoch: int, plan: Plan) -> None:
        """An epoch resumed mid-way runs uncached (its remaining batches come from the real loader)."""
        if frozen_key(plan) is not None:
            self.outcomes[epoch] = ("off", "resumed in the middle of the epoch, the rest of it ran uncached")

    @property
    def suffix(self) -> nn.Module:
        assert self._cut is not None
        return self._cut.suffix

    def features_for(self, loader: DataLoader[Any], device: torch.device) -> CachedBatches | None:
        """Cached batches for ``loader`` under the current cut (built on first use), or None when the
        cut failed its check."""
        assert self._key is not None
        if self._key in self._failed:
            return None
        key = id(loader)
        if key not in self._store:
            try:
                self._store[key] = self._build(loader, device)
            except NotExact as e:
                self._failed[self._key] = str(e)
                return None
        features, labels = self._store[key]
        return CachedBatches(features, labels, loader)

    def _build(self, loader: DataLoader[Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Its own generator: iterating it must not draw from the RNG the run's dropout uses.
        ordered = DataLoader(loader.dataset, batch_size=loader.batch_size or 32, shuffle=False,
                             num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                             generator=torch.Generator())  # fmt: skip
        was_training = self.model.training
        feats, labels = [], []
        try:
            for i, (x, y) in enumerate(ordered):
                x = x.to(device)
                if self._cut is None:  # the first batch the current frozen layers see
                    self._cut = self._choose_cut(x[:_CHECK_SAMPLES])
                self.model.eval()
                f, _ = self._capture(self._cut, x, need_output=False)
                if i == 0:
                    _check_size(f, len(ordered.dataset))  # type: ignore[arg-type]
                feats.append(f)
                labels.append(y.to(device))
        finally:
            self.model.train(was_training)
        out = torch.cat(feats)
        if not self._store:  # the training data's, built first: what summary() reports
            shape = "x".join(str(d) for d in out.shape[1:])
            self._info = f"{shape} values per sample, {out.numel() * out.element_size() / 2**20:.1f} MiB"
        return out, torch.cat(labels)

    def _choose_cut(self, x: torch.Tensor) -> Cut:
        """The head cut when only the head trains (smallest features), else (or when its check fails)
        the prefix cut; the first that passes the exactness check. Raises NotExact with the first
        failure's reason when none does."""
        candidates: list[Callable[[], Cut]] = []
        head_only = only_head_trains(self._plan)
        if head_only:
            candidates.append(lambda: head_cut(self.model, self._head_path))
        # traced on fewer samples than the check uses, so a recorded value that depends on the batch size
        # fails the check instead of passing it
        for back in range(_EARLIER_CUTS + 1 if has_adapters(self.model) else 1):
            candidates.append(functools.partial(prefix_cut, self.model, x[: max(1, len(x) // 2)],
                                                self._autocast, back))  # fmt: skip
        reasons = []
        for make in candidates:
            self.model.eval()
            try:
                cut = make()
                if head_only and cut.on_output is False and not self._head_matches(cut):
                    raise NotExact("the head has several parts")
                self._check(cut, x)
                return cut
            except NotExact as e:
                reasons.append(str(e))
        raise NotExact(reasons[0])

    def _head_matches(self, cut: Cut) -> bool:
        return self._head_params == {id(p) for p in cut.suffix.parameters()}

    @torch.no_grad()
    def _capture(self, cut: Cut, x: torch.Tensor, need_output: bool) -> tuple[torch.Tensor, Any]:
        """(the tensor cached at the cut, the model's output or None) for one batch, in the model's
        current mode. Without ``need_output`` the forward pass stops at the cut."""
        seen: list[Any] = []

        def keep(value: Any) -> None:
            seen.append(value.clone() if need_output and isinstance(value, torch.Tensor) else value)
            if not need_output:
                raise _Stop

        if cut.on_output:
            handle = cut.at.register_forward_hook(lambda _m, _args, out: keep(cut.pick(out)))
        else:
            handle = cut.at.register_forward_pre_hook(lambda _m, args: keep(args[0]))
        out = None
        try:
            with self._autocast():
                out = self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        if len(seen) != 1:
            raise NotExact(f"the cut module ran {len(seen)} times in one forward pass")
        if not isinstance(seen[0], torch.Tensor):
            raise NotExact(f"the cut module sees a {type(seen[0]).__name__}, not a tensor")
        if seen[0].ndim == 0 or seen[0].shape[0] != x.shape[0]:  # cached per sample, along dim 0
            raise NotExact(f"the tensor at the cut has shape {tuple(seen[0].shape)}, not batch-first")
        return seen[0], out

    def _check(self, cut: Cut, x: torch.Tensor) -> None:
        """The suffix on the cached tensors must give the model's own output in eval mode, and the same
        output and gradients in train mode (same RNG seed, frozen BatchNorm in eval)."""
        cached, out = self._capture(cut, x, need_output=True)
        cut.suffix.eval()
        with torch.no_grad(), self._autocast():
            if not _close(out, _run_suffix(cut.suffix, cached.clone())):  # clone: in-place activations
                raise NotExact(
                    "the model's output is not the trainable layers applied to the cached tensors (a "
                    "connection skips the cut, or the model post-processes the head's output)"
                )
        params = [p for p in self.model.parameters() if p.requires_grad]
        buffers = [(b, b.clone()) for b in self.model.buffers()]
        try:
            self.model.train()
            self._set_frozen_norms(self._plan)
            out_model, grads_model = self._output_and_grads(self.model, x, params)
            cut.suffix.train()
            self._set_frozen_norms(self._plan)
            out_suffix, grads_suffix = self._output_and_grads(cut.suffix, cached.clone(), params)
        finally:  # copied back in place: some models refuse load_state_dict without metadata (MNASNet)
            with torch.no_grad():
                for buffer, saved in buffers:
                    buffer.copy_(saved)
            self.model.eval()
        same_grads = all(
            (a is None) == (b is None) and (a is None or _close(a, b))
            for a, b in zip(grads_model, grads_suffix, strict=True)
        )
        if not _close(out_model, out_suffix) or not same_grads:
            raise NotExact(
                "the frozen layers act differently in train mode (dropout or stochastic depth in them, "
                "BatchNorm that is not frozen, or a connection that skips the cut); a model with stochastic "
                "depth caches when built without it (timm drop_path_rate=0, torchvision "
                "stochastic_depth_prob=0) and passed to FineTuner as a module"
            )

    def _output_and_grads(
        self, module: nn.Module, x: torch.Tensor, params: list[nn.Parameter]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
        """Output and gradients of a fixed random projection of it, under a fixed seed inside fork_rng:
        the check must not advance the RNG the run uses."""
        with torch.random.fork_rng(devices=_rng_devices(x)):
            torch.manual_seed(20240229)
            with self._autocast():
                out = _run_suffix(module, x)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            raise NotExact("no trainable parameter affects the model's output")
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
        grads = torch.autograd.grad((out.float() * weights).sum(), params, allow_unused=True)
        return out.detach(), grads


def _run_suffix(module: nn.Module, x: torch.Tensor) -> Any:
    """A model that fails on the cut's placeholders cannot be cached, which is not the user's error."""
    try:
        return module(x)
    except Exception as e:  # any failure here only means: train uncached
        raise NotExact(f"the model cannot run from the cached tensors ({type(e).__name__}: {e})") from e


def _check_size(first: torch.Tensor, n_samples: int) -> None:
    total = first[0].numel() * first.element_size() * n_samples
    if total > MAX_CACHE_BYTES:
        raise NotExact(
            f"the cached tensors would take {total / 2**30:.1f} GiB, more than the "
            f"{MAX_CACHE_BYTES / 2**30:g} GiB limit"
        )


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

    model: nn.Module
    loader: Any
    val_model: nn.Module
    val_loader: Any


def epoch_inputs(
    cache: FeatureCache | None,
    model: nn.Module,
    loader: Any,
    val_loader: Any,
    plan: Plan,
    next_plan: Plan | None,
    epoch: int,
    val_model: nn.Module,
    device: torch.device,
    resumed: bool = False,
) -> EpochInputs:
    """The one place fit decides, per epoch, whether it trains on cached features. ``model`` is what the
    step would call otherwise; ``next_plan`` is the next epoch's plan (None for the last epoch): a cache
    is built only when it will be used twice. ``resumed``: the epoch continues mid-way from a backup,
    with the real loader's remaining batches."""
    full = EpochInputs(model, loader, val_model, val_loader)
    if cache is None or cache.reason is not None:
        return full
    if resumed:
        cache.note_resumed(epoch, plan)
        return full
    batches = cache.batches_for_epoch(epoch, plan, next_plan, loader, device)
    if batches is None:
        return full
    out = EpochInputs(cache.suffix, batches, val_model, val_loader)
    if val_loader is not None and val_model is cache.model and cache.cache_validation:
        val_batches = cache.features_for(val_loader, device)
        if val_batches is not None:
            out = out._replace(val_model=cache.suffix, val_loader=val_batches)
    return out


def cache_status(cache: FeatureCache | None) -> str:
    """The summary() line: in which epochs the cache was used and how, or why not."""
    if cache is None:
        return DEFAULT_STATUS
    if cache.reason is not None:
        return cache.reason
    if not cache.outcomes:
        return "not used: no epoch kept the bottom layer groups frozen while others trained"
    parts = []
    for (state, why), runs in groupby(sorted(cache.outcomes.items()), key=lambda item: item[1]):
        epochs = [e for e, _ in runs]
        parts.append(f"{state} in {_epochs_text(epochs)}: {why}")
    return "; ".join(parts)


def _epochs_text(epochs: list[int]) -> str:
    """'epoch 3', 'epochs 0, 1', 'epochs 0-5' (consecutive runs of three or more as ranges)."""
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    chunks: list[list[int]] = []
    for e in epochs:
        if chunks and e == chunks[-1][-1] + 1:
            chunks[-1].append(e)
        else:
            chunks.append([e])
    text = [f"{c[0]}-{c[-1]}" if len(c) >= 3 else ", ".join(map(str, c)) for c in chunks]
    return "epochs " + ", ".join(text)
