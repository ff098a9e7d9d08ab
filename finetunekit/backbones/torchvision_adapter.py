"""torchvision models as :class:`Backbone`, via a small per-family table of timm-style matchers.

torchvision has no ``group_matcher``, so the common families get one here in timm's vocabulary
(then :mod:`.grouping` treats both registries alike); anything else falls back to top-level children.
The head is the last ``nn.Linear`` of the classifier; hidden classifier layers (VGG, MobileNetV3)
are pretrained and stay in the group before it.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from ..errors import ConfigError, PretrainedWeightsUnavailableError
from .base import Backbone, check_groups
from .common import (
    adapt_stem,
    fresh_linear,
    make_data_config,
    no_weight_decay_names,
    param_names_under,
    set_submodule,
    state_keys_under,
    to_hw,
)
from .grouping import Matcher, finalize_groups, groups_from_matcher, top_level_groups
from .timm_adapter import build_kwargs
from .weights import WeightsSource, load_weights

PREV = (99999,)
_FEATURES_STAGES: dict[str, Any] = {"stem": r"^features\.0\.", "blocks": r"^features\.(\d+)\."}
# ConvNeXt / Swin: odd features.i are stages, even ones are the downsampling between them.
_ALTERNATING: dict[str, Any] = {
    "stem": r"^features\.0\.",
    "blocks": [
        (r"^features\.(\d*[13579])\.", None),
        (r"^features\.(\d*[02468])\.", PREV),
        (r"^norm\.", PREV),
    ],
}
FAMILIES: list[tuple[str, dict[str, Any]]] = [
    (r"^(resnet|resnext|wide_resnet)", {"stem": r"^conv1\.|^bn1\.", "blocks": r"^layer(\d+)\."}),
    (r"^efficientnet", _FEATURES_STAGES),
    (r"^(convnext|swin)", _ALTERNATING),
    (
        r"^vit_",
        {
            "stem": r"^conv_proj\.|^class_token$|^encoder\.pos_embedding$",
            "blocks": [(r"^encoder\.layers\.encoder_layer_(\d+)\.", None), (r"^encoder\.ln\.", PREV)],
        },
    ),
    (r"^regnet", {"stem": r"^stem\.", "blocks": r"^trunk_output\.block(\d+)\."}),
    (
        r"^densenet",
        {
            "stem": r"^features\.(?:conv0|norm0)\.",
            "blocks": [
                (r"^features\.denseblock(\d+)\.", None),
                (r"^features\.transition(\d+)\.", PREV),
                (r"^features\.norm5\.", PREV),
            ],
        },
    ),
]


def has_model(name: str) -> bool:
    return name in all_names()


def all_names() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def vgg_matcher(model: nn.Module) -> dict[str, Any]:
    """VGG stages end at each max-pool; indices differ per depth, so derive them from the model."""
    stages: list[list[str]] = [[]]
    for idx, layer in enumerate(model.features):  # type: ignore[arg-type]
        if isinstance(layer, nn.MaxPool2d):
            stages.append([])
        elif any(True for _ in layer.parameters()):
            stages[-1].append(str(idx))
    return {f"stage{i + 1}": rf"^features\.(?:{'|'.join(s)})\." for i, s in enumerate(stages) if s}


def mobilenet_matcher(model: nn.Module) -> dict[str, Any]:
    """MobileNet ``features`` are single blocks; a stage is a run of blocks with equal out_channels."""
    stages: list[list[int]] = []
    last = None
    for idx, block in enumerate(model.features):  # type: ignore[arg-type]
        width = getattr(block, "out_channels", None)
        if not stages or idx == 1 or width != last:
            stages.append([])
        stages[-1].append(idx)
        last = width
    matcher = {f"features.{s[0]}": rf"^features\.(?:{'|'.join(map(str, s))})\." for s in stages}
    return {"stem": matcher.pop("features.0"), **matcher}


def family_matcher(name: str, model: nn.Module) -> Matcher | None:
    if name.startswith("vgg"):
        return vgg_matcher(model)
    if name.startswith("mobilenet_v"):
        return mobilenet_matcher(model)
    return next((m for pattern, m in FAMILIES if re.match(pattern, name)), None)


def last_linear(model: nn.Module) -> str | None:
    return next((n for n, m in reversed(list(model.named_modules())) if isinstance(m, nn.Linear)), None)


def _create(name: str, pretrained: bool, image_size: Any) -> nn.Module:
    import torchvision

    kwargs: dict[str, Any] = {}
    if image_size is not None and name.startswith("vit_"):  # ViT bakes its size into pos_embedding
        h, w = to_hw(image_size)
        native = data_config_dict(name).get("input_size", (3, 224, 224))[1]
        if h != w or (pretrained and h != native):
            raise ConfigError(
                f"image_size={image_size!r} for torchvision/{name}: torchvision ViT needs a square size, "
                f"and its pretrained weights need {native}. Fix: image_size=None, pretrained=False, or a "
                "timm ViT (e.g. 'timm/vit_base_patch16_224', which resamples position embeddings)."
            )
        kwargs["image_size"] = h
    try:
        return torchvision.models.get_model(name, weights="DEFAULT" if pretrained else None, **kwargs)
    except OSError as e:
        raise PretrainedWeightsUnavailableError(
            f"pretrained weights for 'torchvision/{name}' could not be downloaded or found in "
            f"~/.cache/torch ({type(e).__name__}: {str(e)[:160]}). Expected network access to "
            "download.pytorch.org or a cached file. Fix: pass weights='path/to/file.pth' with local "
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
    return {
        "input_size": (3, crop, crop),
        "mean": tuple(t.mean),
        "std": tuple(t.std),
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
    if in_chans != 3:
        adapt_stem(model, in_chans)
    head_path = last_linear(model)
    if head_path is None:
        raise ConfigError(
            f"torchvision/{name} has no nn.Linear classifier, so finetunekit cannot replace its head. "
            f"Expected a classification model. Fix: wrap it in a module with a Linear head and pass that."
        )
    if weights is not None:
        load_weights(model, weights, state_keys_under(model, head_path), f"torchvision/{name}")
    set_submodule(model, head_path, fresh_linear(model.get_submodule(head_path), num_classes))  # type: ignore[arg-type]
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
