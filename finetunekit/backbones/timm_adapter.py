"""timm models as :class:`Backbone`: timm already knows its heads, stages and preprocessing.

We use ``get_classifier`` / ``reset_classifier`` for the head, ``group_matcher(coarse=True)`` for the
stages and ``resolve_model_data_config`` for preprocessing, so every timm architecture works without
a table of our own.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError, PretrainedWeightsUnavailableError
from .base import Backbone, check_groups
from .common import (
    make_data_config,
    module_path,
    no_weight_decay_names,
    param_names_under,
    state_keys_under,
    to_hw,
)
from .download import hub_access, hub_offline_env, short_cause
from .grouping import MATCH_PREV, finalize_groups, groups_from_matcher, top_level_groups
from .weights import WeightsSource, load_weights


def has_model(name: str) -> bool:
    import timm

    return bool(timm.is_model(name))


def all_names() -> list[str]:
    import timm

    return list(timm.list_models())


def families() -> dict[str, list[str]]:
    """timm's architecture families (the module a model is defined in) and their model names."""
    import timm

    return {module: list(timm.list_models(module=module)) for module in timm.list_modules()}


def fixed_input_size(name: str) -> bool:
    """ViT-like models bake the input size into position embeddings; others take any size."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name, allow_unregistered=True)
    return bool(cfg is not None and getattr(cfg, "fixed_input_size", False))


def _create(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    with (
        hub_access() as offline
    ):  # offline: seconds, not a minute of retries (finetunekit.backbones.download)
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except (OSError, RuntimeError) as e:  # huggingface_hub's errors are OSErrors
            raise _weights_unavailable(name, e, offline) from e


def _weights_unavailable(name: str, error: BaseException, offline: str | None) -> Exception:
    if offline is None:
        why = f"could not be downloaded or found in the cache ({short_cause(error)})"
    else:
        why = f"are not in the local cache and could not be downloaded: {offline}"
    env = (
        "unset HF_HUB_OFFLINE to download them once"
        if hub_offline_env()
        else "when working offline with weights already cached, set HF_HUB_OFFLINE=1 so nothing waits "
        "for the network"
    )
    return PretrainedWeightsUnavailableError(
        f"pretrained weights for 'timm/{name}' {why}. Expected network access to the Hugging Face Hub "
        "or a cached copy. Fix: pass weights='path/to/file.safetensors' (or .pth) with local weights, "
        f"or pretrained=False to start from random init; {env}."
    )


def _create_sized(
    name: str, pretrained: bool, kwargs: dict[str, Any], image_size: int | tuple[int, int] | None
) -> nn.Module:
    """Create with ``img_size=image_size`` where the model takes it, so models that bake the size
    into position embeddings, windows or attention biases (ViT, Swin, LeViT, MaxViT...) run at it.

    Models without an ``img_size`` argument take any input size (CNNs), unless their config says
    the size is fixed: then ``image_size`` cannot be honoured and we say so.
    """
    if image_size is None:
        return _create(name, pretrained, kwargs)
    try:
        return _create(name, pretrained, {**kwargs, "img_size": to_hw(image_size)})
    except TypeError as e:
        if "img_size" not in str(e):
            raise
    if fixed_input_size(name):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name, allow_unregistered=True)
        native = tuple(getattr(cfg, "input_size", (3, 224, 224)))[-2:]
        raise ConfigError(
            f"image_size={image_size!r} for timm/{name}: this model only runs at its native input size "
            f"{native} and takes no img_size argument. Fix: image_size=None (inputs are resized to "
            f"{native}), or pick a model of the family that supports other sizes."
        )
    return _create(name, pretrained, kwargs)


def _not_a_classifier(name: str) -> ConfigError:
    """timm's ``*_enc`` models (Qwen3-ViT, Gemma4-ViT, MobileNetV5 encoders) are feature encoders."""
    import timm

    sibling = name.split(".")[0].removesuffix("_enc")
    fix = f"use 'timm/{sibling}'" if sibling != name and timm.is_model(sibling) else "pick a classifier"
    return ConfigError(
        f"timm/{name} is a feature encoder, not a classifier: it has no classification head "
        f"(get_classifier/reset_classifier) for finetunekit to replace. Expected a timm classification "
        f"model. Fix: {fix}, the same network with a head."
    )


def head_paths(model: nn.Module) -> list[str]:
    """Attribute paths of timm's classifier(s); distilled models (DeiT) have two."""
    heads = model.get_classifier()  # type: ignore[operator]
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return [module_path(model, h) for h in heads]


def _efficientvim_matcher(model: nn.Module) -> dict[str, Any]:
    """EfficientViM normalizes each stage's output for the heads (``norm.i`` after ``stages.i``);
    timm leaves all of them with the classifier, which puts ``norm.0`` after ``stages.2``."""
    n = len(model.stages)  # type: ignore[arg-type]
    first = "|".join(str(i) for i in range(n))
    return {
        "stem": r"^patch_embed",
        "blocks": [
            (r"^stages\.(\d+)", None),
            (rf"^norm\.({first})\.", None),
            (r"^norm\.", (MATCH_PREV,)),
        ],
    }


MATCHER_FIXES = {"EfficientViM": _efficientvim_matcher}


def timm_matcher(model: nn.Module) -> Any:
    """``group_matcher(coarse=True)``, fine-grained where timm has no coarse one (RDNet), fixed
    where its grouping runs against the forward pass (see MATCHER_FIXES)."""
    fix = next((MATCHER_FIXES[c.__name__] for c in type(model).__mro__ if c.__name__ in MATCHER_FIXES), None)
    if fix is not None:  # by class name, subclasses included (EfficientViM's distilled variant)
        return fix(model)
    try:
        return model.group_matcher(coarse=True)  # type: ignore[operator]
    except AssertionError:  # "coarse grouping is not implemented"
        return model.group_matcher(coarse=False)  # type: ignore[operator]


def timm_groups(model: nn.Module, paths: list[str]) -> list:
    """timm's coarse stage groups, with exactly the classifier's params last."""
    head = [n for p in paths for n in param_names_under(model, p)]
    try:
        raw = groups_from_matcher(model, timm_matcher(model))
    except (AttributeError, NotImplementedError):
        raw = top_level_groups(model)
    return finalize_groups(raw, head)


def build_timm(
    name: str,
    num_classes: int,
    *,
    pretrained: bool,
    weights: WeightsSource | None,
    in_chans: int,
    image_size: int | tuple[int, int] | None,
) -> Backbone:
    """Create ``name`` with a fresh ``num_classes`` head; local ``weights`` win over ``pretrained``."""
    from timm.data import resolve_model_data_config

    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    use_registry = pretrained and weights is None
    model = _create_sized(name, use_registry, kwargs, image_size)
    if not callable(getattr(model, "get_classifier", None)):
        raise _not_a_classifier(name)
    if weights is not None:
        head_keys = [k for p in head_paths(model) for k in state_keys_under(model, p)]
        load_weights(model, weights, head_keys, f"timm/{name}")
    if use_registry:  # timm keeps the pretrained classifier when num_classes matches: always start fresh
        model.reset_classifier(num_classes)  # type: ignore[operator]
    paths = head_paths(model)
    groups = timm_groups(model, paths)
    check_groups(model, groups)
    extra = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()  # type: ignore[operator]
    return Backbone(
        model=model,
        groups=groups,
        data_config=make_data_config(resolve_model_data_config(model), in_chans, image_size),
        spec=f"timm/{name}",
        head_path=paths[0],
        no_weight_decay=no_weight_decay_names(model, extra),
        build_kwargs=build_kwargs("timm", name, in_chans, image_size),
    )


def build_kwargs(registry: str, name: str, in_chans: int, image_size: Any) -> dict[str, Any]:
    size = list(to_hw(image_size)) if image_size is not None else None
    return {"registry": registry, "name": name, "in_chans": in_chans, "image_size": size}
