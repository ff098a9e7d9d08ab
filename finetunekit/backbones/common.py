"""Small model surgery shared by the timm, torchvision and generic adapters.

Kept registry-agnostic so the three adapters agree on how a head is replaced, how a stem is adapted
to ``in_chans`` and how the data config and weight-decay exemptions are derived.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, DataConfig

# Parameters that are positions/tokens rather than weights: decaying them hurts (timm, DeiT, Swin).
NO_DECAY_KEYWORDS = ("pos_embed", "pos_embedding", "cls_token", "class_token", "relative_position_bias_table")


def module_path(model: nn.Module, target: nn.Module) -> str:
    """Attribute path of ``target`` inside ``model`` (identity, not equality, so shared types are fine)."""
    for name, module in model.named_modules():
        if module is target:
            return name
    raise LookupError(f"module {type(target).__name__} is not part of {type(model).__name__}")


def param_names_under(model: nn.Module, path: str) -> list[str]:
    """Parameter names of the submodule at ``path``, in the model's own order and spelling."""
    prefix = f"{path}." if path else ""
    return [n for n, _ in model.named_parameters() if n.startswith(prefix)]


def state_keys_under(model: nn.Module, path: str) -> list[str]:
    """State-dict keys (params and buffers) of the submodule at ``path``: what a weights file's head holds."""
    prefix = f"{path}." if path else ""
    return [k for k in model.state_dict() if k.startswith(prefix)]


def set_submodule(model: nn.Module, path: str, new: nn.Module) -> None:
    """Replace the submodule at a dotted path (``classifier.1`` works, Sequential keys are strings)."""
    parent_path, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attr, new)


def fresh_linear(old: nn.Linear, num_classes: int) -> nn.Linear:
    """A newly initialized classifier on the old one's device and dtype, so the model stays uniform."""
    return nn.Linear(
        old.in_features,
        num_classes,
        bias=old.bias is not None,
        device=old.weight.device,
        dtype=old.weight.dtype,
    )


def fresh_head(old: nn.Module, num_classes: int) -> nn.Module:
    """A new classifier like ``old`` (an ``nn.Linear``, or a 1x1 ``nn.Conv2d`` as in SqueezeNet)."""
    if isinstance(old, nn.Conv2d):
        return nn.Conv2d(
            old.in_channels,
            num_classes,
            kernel_size=old.kernel_size,  # type: ignore[arg-type]
            bias=old.bias is not None,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
    return fresh_linear(old, num_classes)  # type: ignore[arg-type]


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The stem convolution: the first ``nn.Conv2d`` in module order."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def adapt_stem(model: nn.Module, in_chans: int) -> None:
    """Give the stem ``in_chans`` inputs while keeping its (pretrained) filters, the way timm does.

    timm's ``adapt_input_conv`` sums RGB filters for 1 channel and repeats/rescales them for more,
    which keeps activations at the scale the rest of the network was trained on.
    """
    from timm.models import adapt_input_conv

    found = first_conv(model)
    if found is None or found[1].in_channels == in_chans:
        return
    _, conv = found
    if conv.groups != 1:
        raise NotImplementedError("cannot adapt a grouped stem convolution")
    weight = adapt_input_conv(in_chans, conv.weight.detach())
    conv.weight = nn.Parameter(weight, requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_chans


def per_channel(values: Iterable[float], in_chans: int) -> tuple[float, ...]:
    """Mean/std for ``in_chans`` channels, mirroring how ``adapt_input_conv`` maps RGB filters.

    One channel gets the average (the filters were summed); more channels cycle R, G, B (the filters
    were repeated), so normalization stays consistent with the adapted stem.
    """
    vals = tuple(float(v) for v in values)
    if len(vals) == in_chans:
        return vals
    if in_chans == 1:
        return (sum(vals) / len(vals),)
    return tuple(vals[i % len(vals)] for i in range(in_chans))


def to_hw(image_size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    h, w = image_size
    return int(h), int(w)


def make_data_config(
    cfg: Mapping[str, Any] | None, in_chans: int, image_size: int | tuple[int, int] | None
) -> DataConfig:
    """DataConfig from a timm-style cfg dict; ``image_size`` overrides H, W and ``in_chans`` C."""
    cfg = dict(cfg or {})
    default_hw = tuple(cfg.get("input_size", (3, 224, 224)))[-2:]
    h, w = to_hw(image_size) if image_size is not None else default_hw
    return DataConfig(
        input_size=(in_chans, int(h), int(w)),
        mean=per_channel(cfg.get("mean", IMAGENET_MEAN), in_chans),
        std=per_channel(cfg.get("std", IMAGENET_STD), in_chans),
        interpolation=str(cfg.get("interpolation", "bilinear")),
        crop_pct=float(cfg.get("crop_pct", 0.875)),
    )


def no_weight_decay_names(model: nn.Module, extra: Iterable[str] = ()) -> set[str]:
    """Biases, norm weights (all 1-D params) and position/token params: what timm exempts from decay.

    ``extra`` are names or patterns a model declares (timm's ``model.no_weight_decay()``).
    """
    patterns = set(extra)
    out: set[str] = set()
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or leaf in NO_DECAY_KEYWORDS or _matches(name, patterns):
            out.add(name)
    return out


def _matches(name: str, patterns: set[str]) -> bool:
    if name in patterns:
        return True
    return any(name.endswith("." + p) or fnmatch.fnmatchcase(name, p) for p in patterns)
