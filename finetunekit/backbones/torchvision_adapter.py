"""torchvision models as :class:`Backbone`, via a per-family table of timm-style matchers.

torchvision has no ``group_matcher``; :mod:`.torchvision_families` gives every family one in timm's
vocabulary (then :mod:`.grouping` treats both registries alike). The head is the last ``nn.Linear``
of the classifier (SqueezeNet: its final 1x1 conv); hidden classifier layers (VGG, MobileNetV3) are
pretrained and stay in the group before it. GoogLeNet / Inception v3 lose their auxiliary heads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, PretrainedWeightsUnavailableError
from .base import Backbone, check_groups
from .common import (
    adapt_stem,
    fresh_head,
    make_data_config,
    no_weight_decay_names,
    param_names_under,
    set_submodule,
    state_keys_under,
    to_hw,
)
from .download import short_cause, torch_hub_cached, unreachable
from .grouping import finalize_groups, groups_from_matcher, top_level_groups
from .timm_adapter import build_kwargs
from .torchvision_families import (
    HALF_NORMALIZED,
    classifier_path,
    create_kwargs,
    disable_transform_input,
    family_matcher,
    remove_aux_heads,
)
from .weights import WeightsSource, load_weights


def has_model(name: str) -> bool:
    return name in all_names()


def all_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _create(name: str, pretrained: bool, image_size: Any) -> nn.Module:
    import torchvision

    hw = to_hw(image_size) if image_size is not None else None
    if hw is not None and name.startswith("vit_"):  # ViT bakes its size into pos_embedding
        native = data_config_dict(name).get("input_size", (3, 224, 224))[1]
        if hw[0] != hw[1] or (pretrained and hw[0] != native):
            raise ConfigError(
                f"image_size={image_size!r} for torchvision/{name}: torchvision ViT needs a square size, "
                f"and its pretrained weights need {native}. Fix: image_size=None, pretrained=False, or a "
                "timm ViT (e.g. 'timm/vit_base_patch16_224', which resamples position embeddings)."
            )
    kwargs = create_kwargs(name, hw)
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    url = torchvision.models.get_model_weights(name).DEFAULT.url
    offline = None if torch_hub_cached(url) else unreachable(url)  # seconds, not a TCP timeout
    try:
        if offline is not None:
            raise ConnectionError(offline)
        return torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
    except OSError as e:
        why = f"could not be downloaded: {offline or short_cause(e)}"
        raise PretrainedWeightsUnavailableError(
            f"pretrained weights for 'torchvision/{name}' are not in ~/.cache/torch and {why}. Expected "
            f"network access to {url} or a cached file. Fix: pass weights='path/to/file.pth' with local "
            "weights, or pretrained=False to start from random init."
        ) from e


def data_config_dict(name: str) -> dict[str, Any]:
    """The preprocessing of the architecture's DEFAULT weights, even when pretrained=False."""
    import torchvision

    try:
        t = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError, KeyError):
        return {}
    crop, resize = t.crop_size[0], t.resize_size[0]
    half = name in HALF_NORMALIZED
    return {
        "input_size": (3, crop, crop),
        "mean": (0.5, 0.5, 0.5) if half else tuple(t.mean),
        "std": (0.5, 0.5, 0.5) if half else tuple(t.std),
        "interpolation": t.interpolation.value,
        "crop_pct": crop / resize,
    }


def build_torchvision(
    name: str,
    num_classes: int,
    *,
    pretrained: bool,
    weights: WeightsSource | None,
    in_chans: int,
    image_size: int | tuple[int, int] | None,
) -> Backbone:
    """Create ``name``, adapt its stem, load local weights, then swap in a fresh head."""
    model = _create(name, pretrained and weights is None, image_size)
    aux = remove_aux_heads(model)
    disable_transform_input(model)
    if in_chans != 3:
        adapt_stem(model, in_chans)
    head_path = classifier_path(model)
    if head_path is None:
        raise ConfigError(
            f"torchvision/{name} has no nn.Linear or 1x1-conv classifier, so finetunekit cannot replace "
            "its head. Expected a classification model. Fix: wrap it in a module with a Linear head."
        )
    if weights is not None:  # a checkpoint's aux-head tensors are expected and skipped, like its head
        skip = state_keys_under(model, head_path) + aux
        load_weights(model, weights, skip, f"torchvision/{name}")
    set_submodule(model, head_path, fresh_head(model.get_submodule(head_path), num_classes))
    matcher = family_matcher(name, model)
    raw = groups_from_matcher(model, matcher) if matcher is not None else top_level_groups(model)
    groups = finalize_groups(raw, param_names_under(model, head_path))
    check_groups(model, groups)
    return Backbone(
        model=model,
        groups=groups,
        data_config=make_data_config(data_config_dict(name), in_chans, image_size),
        spec=f"torchvision/{name}",
        head_path=head_path,
        no_weight_decay=no_weight_decay_names(model),
        build_kwargs=build_kwargs("torchvision", name, in_chans, image_size),
    )
