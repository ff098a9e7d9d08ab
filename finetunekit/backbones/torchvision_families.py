"""What torchvision does not say about its models: stage matchers, classifier location, aux heads.

torchvision has no ``group_matcher``, so each family gets one here in timm's vocabulary (then
:mod:`.grouping` treats both registries alike). Every name in
``torchvision.models.list_models(module=torchvision.models)`` is covered by a rule below; the sweep in
``tests/backbones/test_sweep_torchvision.py`` checks that none falls through to top-level children.
"""

from __future__ import annotations

import re
from typing import Any

from torch import nn

from .grouping import Matcher

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
    # GoogLeNet: inception3a/3b, 4a..4e, 5a/5b are its three stages (between max-pools).
    (r"^googlenet$", {"stem": r"^conv[123]\.", "blocks": r"^inception(\d)"}),
    # Inception v3: Mixed_5*, Mixed_6*, Mixed_7* are its three stages.
    (r"^inception_v3$", {"stem": r"^Conv2d_", "blocks": r"^Mixed_(\d)"}),
    # ShuffleNetV2: the final 1x1 conv5 belongs to the last stage (timm groups conv_head that way).
    (
        r"^shufflenet",
        {"stem": r"^conv1\.", "blocks": [(r"^stage(\d+)\.", None), (r"^conv5\.", PREV)]},
    ),
    (r"^maxvit", {"stem": r"^stem\.", "blocks": r"^blocks\.(\d+)\."}),
]
# Models whose ``transform_input`` re-normalizes ImageNet inputs to the [-1, 1] range their
# (TF-ported) weights expect. We switch it off and normalize that way directly, which is the same
# for 3 channels and, unlike transform_input, also works for in_chans=1 or 4.
HALF_NORMALIZED = ("googlenet", "inception_v3")
AUX_ATTRS = ("aux1", "aux2", "AuxLogits")


def pool_stage_matcher(model: nn.Module) -> dict[str, Any]:
    """VGG / AlexNet / SqueezeNet stages end at each max-pool; derive the indices from the model."""
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


def mnasnet_matcher(model: nn.Module) -> dict[str, Any]:
    """MNASNet's flat ``layers``: the conv layers before the first block stack are the stem, each
    ``Sequential`` stack is a stage, and the final 1x1 conv + BN join the last stage."""
    stacks = [i for i, layer in enumerate(model.layers) if isinstance(layer, nn.Sequential)]  # type: ignore[arg-type]
    stem = "|".join(str(i) for i in range(stacks[0]))
    tail = "|".join(str(i) for i in range(stacks[-1] + 1, len(model.layers)))  # type: ignore[arg-type]
    return {
        "stem": rf"^layers\.(?:{stem})\.",
        "blocks": [
            (rf"^layers\.({'|'.join(map(str, stacks))})\.", None),
            (rf"^layers\.(?:{tail})\.", PREV),
        ],
    }


def family_matcher(name: str, model: nn.Module) -> Matcher | None:
    """The stage matcher for torchvision model ``name`` (None: top-level children)."""
    if name.startswith(("vgg", "alexnet", "squeezenet")):
        return pool_stage_matcher(model)
    if name.startswith("mobilenet_v"):
        return mobilenet_matcher(model)
    if name.startswith("mnasnet"):
        return mnasnet_matcher(model)
    return next((m for pattern, m in FAMILIES if re.match(pattern, name)), None)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def classifier_path(model: nn.Module) -> str | None:
    """The classifier: the last ``nn.Linear``, or for conv-headed models (SqueezeNet) the last 1x1
    ``nn.Conv2d`` when nothing with parameters follows it."""
    modules = list(model.named_modules())
    linear = next((n for n, m in reversed(modules) if isinstance(m, nn.Linear)), None)
    if linear is not None:
        return linear
    for name, module in reversed(modules):
        if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1):
            return name
        if not list(module.children()) and _has_params(module):
            return None
    return None


def remove_aux_heads(model: nn.Module) -> list[str]:
    """Drop GoogLeNet / Inception v3 auxiliary classifiers; return their state-dict keys.

    Why remove rather than sum their losses: aux heads were a regularizer for training deep nets from
    scratch (Szegedy et al. 2014/2015); fine-tuning recipes drop them (timm's inception_v3 has none),
    and with them gone the model returns one logits tensor in train and eval mode alike, so the loss,
    metrics and every strategy treat these models like any other. The keys let a checkpoint that
    still holds aux tensors load (they are skipped, like its classifier).
    """
    removed = []
    for attr in AUX_ATTRS:
        module = getattr(model, attr, None)
        if isinstance(module, nn.Module):
            removed += [f"{attr}.{k}" for k in module.state_dict()]
            setattr(model, attr, None)
    if hasattr(model, "aux_logits"):
        setattr(model, "aux_logits", False)  # noqa: B010 - a plain attribute, not a Module
    return removed


def disable_transform_input(model: nn.Module) -> None:
    """See HALF_NORMALIZED: the data config normalizes to [-1, 1] instead."""
    if getattr(model, "transform_input", False):
        setattr(model, "transform_input", False)  # noqa: B010 - a plain attribute, not a Module


def create_kwargs(name: str, image_size: tuple[int, int] | None) -> dict[str, Any]:
    """Constructor arguments that give ``image_size`` to models that bake it in (ViT, MaxViT).

    GoogLeNet / Inception v3 get ``init_weights=False`` (PyTorch's default init instead of scipy's
    slow truncated normal; pretrained weights replace it anyway), which also silences their
    FutureWarning about that default changing.
    """
    kwargs: dict[str, Any] = {"init_weights": False} if name in HALF_NORMALIZED else {}
    if image_size is None:
        return kwargs
    if name.startswith("vit_"):
        kwargs["image_size"] = image_size[0]
    if name.startswith("maxvit"):
        kwargs["input_size"] = image_size
    return kwargs
