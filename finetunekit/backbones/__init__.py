"""Turn a name or a module into a :class:`Backbone`: fresh head, ordered layer groups, data config.

``"timm/<name>"`` and ``"torchvision/<name>"`` pick a registry; a bare name tries timm first (its
models carry richer metadata), then torchvision; ``"hf-hub:org/repo"`` and ``"local-dir:path"`` are
timm's Hub and folder sources (see hub_source.py); an ``nn.Module`` is used as given. timm and
torchvision are imported inside the functions so ``import finetunekit`` stays fast.
"""

from __future__ import annotations

import difflib
import fnmatch
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import BackboneNotFoundError, ConfigError
from .base import Backbone, DataConfig, LayerGroup, check_groups
from .hub_source import hub_name
from .user_groups import GroupEntry, groups_from_spec

__all__ = [
    "Backbone",
    "DataConfig",
    "LayerGroup",
    "build_backbone",
    "check_groups",
    "list_backbones",
    "rebuild_backbone",
]

REGISTRIES = ("timm", "torchvision")


def _registry_names(registry: str) -> list[str]:
    if registry == "timm":
        from . import timm_adapter

        return timm_adapter.all_names()
    from . import torchvision_adapter

    return torchvision_adapter.all_names()


def _not_found(spec: str, registries: tuple[str, ...]) -> BackboneNotFoundError:
    name = spec.split("/", 1)[-1]
    pairs = [(f"{r}/{n}", n) for r in registries for n in _registry_names(r)]
    close = difflib.get_close_matches(name, sorted({n for _, n in pairs}), n=5, cutoff=0.6)
    rank = {c: i for i, c in enumerate(close)}
    suggestions = sorted((full for full, n in pairs if n in rank), key=lambda f: rank[f.split("/", 1)[1]])
    return BackboneNotFoundError(
        f"backbone {spec!r} is not in {' or '.join(registries)}. Expected 'timm/<name>', "
        f"'torchvision/<name>', a bare registry name or an nn.Module. "
        f"Closest names: {suggestions or 'none'}. "
        "Fix: use one of these, or see finetunekit.backbones.list_backbones('*pattern*')."
    )


def resolve_spec(spec: str) -> tuple[str, str]:
    """``(registry, name)`` for a spec string; raises BackboneNotFoundError with close names."""
    from . import timm_adapter, torchvision_adapter

    registry, sep, name = spec.partition("/")
    if sep and registry in REGISTRIES:
        found = timm_adapter.has_model(name) if registry == "timm" else torchvision_adapter.has_model(name)
        if not found:
            raise _not_found(spec, (registry,))
        return registry, name
    if timm_adapter.has_model(spec):
        return "timm", spec
    if torchvision_adapter.has_model(spec):
        return "torchvision", spec
    raise _not_found(spec, REGISTRIES)


# The most a saved config may hold (finetunekit.saving.validate): what is built here can be saved and loaded.
MAX_CLASSES, MAX_CHANNELS, MAX_SIDE = 1_000_000, 1024, 4096


def _check_args(num_classes: int, in_chans: int, image_size: Any) -> None:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, int)
        or not 1 <= num_classes <= MAX_CLASSES
    ):
        raise ConfigError(
            f"num_classes={num_classes!r}: expected an int in [1, {MAX_CLASSES}]. Fix: e.g. num_classes=10."
        )
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or not 1 <= in_chans <= MAX_CHANNELS:
        raise ConfigError(
            f"in_chans={in_chans!r}: expected an int in [1, {MAX_CHANNELS}] (1 gray, 3 RGB). Fix: in_chans=3."
        )
    sizes = [image_size] if isinstance(image_size, int) else list(image_size or [])
    if image_size is not None and (
        len(sizes) not in (1, 2) or not all(isinstance(s, int) and 0 < s <= MAX_SIDE for s in sizes)
    ):
        raise ConfigError(
            f"image_size={image_size!r}: expected a positive int (at most {MAX_SIDE}) or (height, width). "
            "Fix: e.g. image_size=64."
        )


def build_backbone(
    spec: str | nn.Module,
    num_classes: int,
    *,
    pretrained: bool = True,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None = None,
    in_chans: int = 3,
    image_size: int | tuple[int, int] | None = None,
    head: str | None = None,
    groups: Sequence[GroupEntry] | None = None,
) -> Backbone:
    """A :class:`Backbone` with a fresh ``num_classes`` head.

    ``weights`` (a local file or state dict) take precedence over ``pretrained``: nothing is
    downloaded when they are given. ``head`` only applies to ``nn.Module`` specs, whose own
    weights are kept (``pretrained`` is ignored for them). ``groups`` replaces the automatic layer
    groups for any backbone: one attribute path or glob per group, input -> head (see
    :func:`.user_groups.groups_from_spec`).
    """
    backbone = _build(spec, num_classes, pretrained, weights, in_chans, image_size, head)
    if groups is not None:
        backbone.groups = groups_from_spec(backbone.model, groups, backbone.groups[-1].param_names)
        check_groups(backbone.model, backbone.groups)
        backbone.build_kwargs["groups"] = [g if isinstance(g, str) else list(g) for g in groups]
    return backbone


def _build(
    spec: str | nn.Module,
    num_classes: int,
    pretrained: bool,
    weights: str | os.PathLike[str] | Mapping[str, torch.Tensor] | None,
    in_chans: int,
    image_size: int | tuple[int, int] | None,
    head: str | None,
) -> Backbone:
    _check_args(num_classes, in_chans, image_size)
    if isinstance(image_size, list):
        image_size = (image_size[0], image_size[1])
    if isinstance(spec, nn.Module):
        from .generic import build_module

        return init_head(
            build_module(
                spec, num_classes, head=head, weights=weights, in_chans=in_chans, image_size=image_size
            )
        )
    if not isinstance(spec, str):
        raise ConfigError(
            f"backbone {spec!r} ({type(spec).__name__}): expected a name like 'timm/resnet18' or an "
            "nn.Module. Fix: pass a string or a model instance."
        )
    if head is not None:
        raise ConfigError(
            f"head={head!r} with backbone {spec!r}: head= only applies to nn.Module backbones; registry "
            "models know their classifier. Fix: drop head=."
        )
    kwargs: dict[str, Any] = {
        "pretrained": pretrained,
        "weights": weights,
        "in_chans": in_chans,
        "image_size": image_size,
    }
    if hub_name(spec) is not None:  # [ship] "hf-hub:org/repo" / "local-dir:path": timm's other sources
        from .hub_source import build_hub
        from .timm_adapter import build_timm

        return init_head(build_hub(str(hub_name(spec)), build_timm, num_classes, **kwargs))
    registry, name = resolve_spec(spec)
    if registry == "timm":
        from .timm_adapter import build_timm

        return init_head(build_timm(name, num_classes, **kwargs))
    from .torchvision_adapter import build_torchvision

    return init_head(build_torchvision(name, num_classes, **kwargs))


HEAD_INIT_STD = 0.01


@torch.no_grad()
def init_head(backbone: Backbone) -> Backbone:
    """One head initialization for every registry: small weights (trunc-normal, std 0.01), zero bias.

    Registries differ (timm's EfficientNet head gets uniform(+-1/sqrt(num_classes)), which gives logits
    of several units on pretrained features); a small head starts at loss ~ln(num_classes), so early
    gradients do not distort the pretrained features (the concern behind LP-FT, Kumar et al. 2022).
    """
    params = dict(backbone.model.named_parameters())
    for name in backbone.groups[-1].param_names:
        p = params[name]
        if p.ndim >= 2:
            nn.init.trunc_normal_(p, std=HEAD_INIT_STD, a=-2 * HEAD_INIT_STD, b=2 * HEAD_INIT_STD)
        else:
            p.zero_()
    return backbone


def rebuild_backbone(build_kwargs: dict, num_classes: int) -> Backbone:
    """The same architecture from :attr:`Backbone.build_kwargs`, randomly initialized, offline.

    Used by ``FineTuner.load`` before it loads the saved weights over it.
    """
    registry = build_kwargs.get("registry")
    if registry == "module":
        raise ConfigError(
            f"this model was built from a custom module ({build_kwargs.get('class')}), which finetunekit "
            "cannot recreate from its config. Expected a registry backbone. Fix: construct the module "
            "yourself and pass it: FineTuner.load(path, model=MyNet())."
        )
    if registry not in REGISTRIES or "name" not in build_kwargs:
        raise ConfigError(
            f"build_kwargs={build_kwargs!r}: expected {{'registry': 'timm'|'torchvision', 'name': ...}}. "
            "Fix: pass the dict saved as Backbone.build_kwargs, unmodified."
        )
    size = build_kwargs.get("image_size")
    return build_backbone(
        f"{registry}/{build_kwargs['name']}",
        num_classes,
        pretrained=False,
        in_chans=int(build_kwargs.get("in_chans", 3)),
        image_size=(int(size[0]), int(size[1])) if size is not None else None,
        groups=build_kwargs.get("groups"),
    )


def list_backbones(pattern: str = "*") -> list[str]:
    """``"timm/<name>"`` and ``"torchvision/<name>"`` ids matching a shell-style ``pattern``.

    The pattern is matched against both the full id and the bare name, so ``"resnet1*"`` and
    ``"torchvision/resnet*"`` both work.
    """
    out = []
    for registry in REGISTRIES:
        for name in _registry_names(registry):
            full = f"{registry}/{name}"
            if fnmatch.fnmatchcase(full, pattern) or fnmatch.fnmatchcase(name, pattern):
                out.append(full)
    return out
