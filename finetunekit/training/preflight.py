"""Checks ``fit`` runs after preparing the data and before the first optimizer step.

The data modules check what they can see one array or item at a time. What needs the model or both
data sets is checked here: that validation folders have the training folders' classes (otherwise label
3 means another class in each, and validation accuracy is silently wrong), that the loader yields any
batch at all, and that a few samples of equal size pass through the model (which turns "too small for
this backbone" or "mixed image sizes", otherwise a shape error deep inside a layer or the collate
function, into an error naming the input). The probe runs in eval mode, without gradients and with
every RNG state put back, so it changes neither the weights, BatchNorm statistics nor any random draw.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import BatchSampler

from finetunekit._norms import BATCH_NORMS
from finetunekit.data import PreparedData
from finetunekit.errors import ConfigError, DataError
from finetunekit.techniques.resizing import ProgressiveResizing, resize_batch

NormSizes = dict[nn.Module, int]  # BatchNorm module -> values per channel a single sample gives it

_PROBE_ITEMS = 3  # the first two and the last sample


def check_same_classes(train: PreparedData, val: PreparedData | None) -> None:
    if val is None or train.class_names is None or val.class_names is None:
        return
    if list(train.class_names) != list(val.class_names):
        only_train = sorted(set(train.class_names) - set(val.class_names))
        only_val = sorted(set(val.class_names) - set(train.class_names))
        raise DataError(
            f"the validation classes {list(val.class_names)[:10]} differ from the training classes "
            f"{list(train.class_names)[:10]} (only in training: {only_train[:5]}, only in validation: "
            f"{only_val[:5]}); expected the same class subfolders in both, since a label is a position in "
            "the sorted class list. Fix: add the missing (possibly empty-named) folders or remove extra ones."
        )


def check_has_batches(loader: Any) -> None:
    try:
        n = len(loader)
    except TypeError:
        return
    if n == 0:
        size = getattr(loader, "batch_size", None)
        count = (
            len(loader.dataset) if hasattr(loader, "dataset") and hasattr(loader.dataset, "__len__") else "?"
        )
        raise DataError(
            f"the training DataLoader yields no batches ({count} samples, batch_size={size}, "
            f"drop_last={getattr(loader, 'drop_last', None)}); expected at least one batch per epoch. Fix: "
            "use a smaller batch_size, drop_last=False, or more data."
        )


@contextmanager
def _untouched_rngs() -> Iterator[None]:
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    try:
        yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])


def _sample_items(data: PreparedData) -> list[tuple[int, torch.Tensor]]:
    assert data.dataset is not None and data.num_samples is not None
    n = data.num_samples
    indices = sorted({0, min(1, n - 1), n - 1})[:_PROBE_ITEMS]
    return [(i, data.dataset[i][0]) for i in indices]


def _reduction(model: nn.Module) -> int | None:
    """How much the backbone downsamples (timm's ``feature_info``); None when it does not say."""
    info = getattr(model, "feature_info", None)
    try:
        return max(int(f["reduction"]) for f in info)  # type: ignore[union-attr]
    except (TypeError, KeyError, ValueError):
        return None


def _check_size(model: nn.Module, shape: tuple[int, ...], spec: str) -> None:
    """Images smaller than the backbone's downsampling still run (padding makes 1x1 feature maps) but
    the features are mostly padding: a silent failure worth an error."""
    reduction = _reduction(model)
    if reduction is None or len(shape) != 3 or min(shape[1:]) >= reduction:
        return
    raise DataError(
        f"training images of shape {shape} are too small for {spec}, which downsamples by {reduction}; "
        f"expected at least {reduction}x{reduction} pixels (its weights were made for larger inputs). Fix: "
        "pass uint8 images to have them resized, or build the FineTuner with a larger image_size."
    )


def _record_norm_sizes(model: nn.Module, sizes: NormSizes) -> list[Any]:
    """Hooks that note, per BatchNorm, how many values per channel one sample gives it (1 after
    global pooling or on 1x1 maps: then a batch of one cannot train it)."""

    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        sizes[module] = x.numel() // max(1, x.shape[0] * (x.shape[1] if x.ndim > 1 else 1))

    norms = (m for m in model.modules() if isinstance(m, BATCH_NORMS))
    return [m.register_forward_pre_hook(hook) for m in norms]


def probe_forward(
    model: nn.Module, data: PreparedData, device: torch.device, num_classes: int, spec: str
) -> NormSizes | None:
    """Run a few training samples through the model; raise DataError naming the input if that fails.
    Returns what each BatchNorm sees per sample (None when the data is a user's DataLoader)."""
    if data.dataset is None or not data.num_samples:
        return None  # a user's DataLoader: reading from it would consume its first batch
    with _untouched_rngs():
        items = _sample_items(data)
    shapes = {tuple(t.shape) for _, t in items}
    if len(shapes) > 1:
        listed = ", ".join(f"item {i}: {tuple(t.shape)}" for i, t in items)
        raise DataError(
            f"x yields images of different sizes ({listed}); expected one size for all images, since a "
            "batch is one tensor. Fix: resize them in your Dataset, or return uint8 images to have "
            "finetunekit resize them to the model's input size."
        )
    _check_size(model, tuple(items[0][1].shape), spec)
    batch = torch.stack([t for _, t in items]).to(device)
    was_training = model.training
    model.eval()
    sizes: NormSizes = {}
    hooks = _record_norm_sizes(model, sizes)
    try:
        with torch.no_grad(), _untouched_rngs():
            out = model(batch)
    except (RuntimeError, ValueError, IndexError) as e:
        raise DataError(
            f"a forward pass of {spec} on training images of shape {tuple(batch.shape[1:])} failed: "
            f"{str(e).splitlines()[0][:300]}. Expected images the model can take (too small for its "
            "downsampling, or the wrong channel count?). Fix: pass uint8 images to have them resized to "
            "the model's input size, or build the FineTuner with a matching image_size / in_chans."
        ) from e
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    if out.ndim != 2 or out.shape[1] != num_classes:
        raise DataError(
            f"{spec} returned outputs of shape {tuple(out.shape)} for {len(batch)} images; expected "
            f"({len(batch)}, {num_classes}) logits. Check the model's head and num_classes."
        )
    return sizes


def check_resizable(
    model: nn.Module, resizing: ProgressiveResizing, epochs: int, data: PreparedData, device: torch.device,
    spec: str,
) -> None:  # fmt: skip
    """compile(progressive_resizing=...): the model must run at the smallest training size (a timm ViT
    built for one size refuses others), checked on one sample before any step."""
    if data.dataset is None or not data.num_samples:
        return  # a user's DataLoader: reading from it would consume its first batch
    with _untouched_rngs():
        image = data.dataset[0][0]
    full = (int(image.shape[-2]), int(image.shape[-1]))
    smallest = min(resizing.sizes(epochs, full), key=lambda hw: hw[0] * hw[1])
    if smallest == full:
        return
    batch = resize_batch(image.unsqueeze(0).to(device), smallest)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _untouched_rngs():
            model(batch)
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:
        raise ConfigError(
            f"compile(progressive_resizing={resizing!r}) trains the first epochs at "
            f"{smallest[0]}x{smallest[1]} (images are {full[0]}x{full[1]}), but {spec} fails at that size: "
            f"{str(e).splitlines()[0][:200]}. Fix: for a timm ViT, build it with "
            "timm.create_model(name, pretrained=True, dynamic_img_size=True) and pass the module; or raise "
            "initial_scale; or turn progressive resizing off."
        ) from e
    finally:
        model.train(was_training)
    _check_size(model, (image.shape[0], *smallest), spec)


def training_norms(
    strategy: Any, norms_by_group: Sequence[Sequence[nn.Module]], epochs: int
) -> list[nn.Module]:
    """BatchNorm modules that run in training mode in some epoch of the plan (trainable groups, and
    frozen ones too when the strategy has ``train_bn``)."""
    found: dict[int, nn.Module] = {}
    for epoch in range(epochs):
        plan = strategy.plan(len(norms_by_group), epoch)
        for scale, norms in zip(plan, norms_by_group, strict=True):
            if scale is not None or strategy.train_bn:
                found.update((id(m), m) for m in norms)
    return list(found.values())


def check_last_batch(
    loader: Any, data: PreparedData, sizes: NormSizes | None, norms: list[nn.Module]
) -> None:
    """A last batch of one sample would crash a BatchNorm that sees one value per channel per sample
    ("Expected more than 1 value per channel when training"), after the epoch's other steps. Our own
    loaders drop that batch (one warning); a user's DataLoader, which we do not alter, is refused."""
    sampler = getattr(loader, "batch_sampler", None)
    if not norms or not isinstance(sampler, BatchSampler) or sampler.drop_last:
        return
    try:
        n = len(sampler.sampler)  # type: ignore[arg-type]
    except TypeError:
        return
    if n % sampler.batch_size != 1:
        return
    if sizes is not None and not any(sizes.get(m) == 1 for m in norms):
        return  # every BatchNorm in training sees several values per sample: a batch of one trains
    fix = f"use a batch_size that does not leave one sample over ({n} samples), or drop_last=True"
    if data.loader is not None or n == 1:
        raise DataError(
            f"the last training batch holds 1 sample ({n} samples, batch_size={sampler.batch_size}) and the "
            "model has BatchNorm layers in training mode, which cannot train on a single sample (torch "
            f"raises after the epoch's other steps). Fix: {fix}."
        )
    sampler.drop_last = True
    warnings.warn(
        f"the last training batch would hold 1 sample ({n} samples, batch_size={sampler.batch_size}), which "
        "BatchNorm layers in training mode cannot train on; it is dropped each epoch (1 sample unused). "
        f"To use it, {fix.replace(', or drop_last=True', '')}.",
        RuntimeWarning,
        stacklevel=3,
    )


def head_snapshot(model: nn.Module, head_params: Sequence[str]) -> dict[str, torch.Tensor]:
    """A CPU copy of the freshly initialized head, to tell a model that was never trained."""
    params = dict(model.named_parameters())
    return {n: params[n].detach().cpu().clone() for n in head_params}


def warn_if_untrained(
    model: nn.Module, snapshot: dict[str, torch.Tensor] | None, action: str
) -> dict[str, torch.Tensor] | None:
    """Warn when ``action`` (predict / evaluate) runs on a model whose head is still the random one it
    was built with; returns the snapshot while that holds, None once the head changed."""
    if snapshot is None:
        return None
    params = dict(model.named_parameters())
    if not all(n in params and torch.equal(params[n].detach().cpu(), t) for n, t in snapshot.items()):
        return None
    warnings.warn(
        f"{action} runs before any training: the classifier head is still randomly initialized, so its "
        "outputs are meaningless. Call fit() first, or load a trained model with FineTuner.load().",
        RuntimeWarning,
        stacklevel=4,  # the user's line: past this function, the tuner method and its DDP guard
    )
    return snapshot
