"""Any ``nn.Module`` as :class:`Backbone`: find its classifier, replace it, group its children.

A user's own network has no registry metadata, so we rely on structure: the classifier is the last
``nn.Linear`` (or the one ``head=`` names), the groups are the top-level children. A module that
carries timm's API (``group_matcher``, ``pretrained_cfg``) keeps timm's stages and preprocessing.
"""

from __future__ import annotations

from torch import nn

from ..errors import HeadNotFoundError
from .base import Backbone, check_groups
from .common import (
    adapt_stem,
    first_conv,
    fresh_head,
    make_data_config,
    no_weight_decay_names,
    param_names_under,
    set_submodule,
    state_keys_under,
)
from .grouping import finalize_groups, groups_from_matcher, top_level_groups
from .torchvision_families import remove_aux_heads
from .weights import WeightsSource, load_weights


def _linear_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def _leaves_with_params(model: nn.Module) -> list[str]:
    return [
        n
        for n, m in model.named_modules()
        if n and not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def _head_error(model: nn.Module, problem: str) -> HeadNotFoundError:
    linears = _linear_names(model)
    candidates = linears or _leaves_with_params(model)[-5:]
    kind = "nn.Linear layers" if linears else "no nn.Linear; last layers with parameters"
    return HeadNotFoundError(
        f"{type(model).__name__}: {problem}. Expected head= to name the classifier (an nn.Linear, or "
        f"a 1x1 nn.Conv2d as in SqueezeNet) by attribute path. Candidates ({kind}): {candidates}. "
        f"Fix: pass head='<one of these>'"
        f"{'' if linears else ' if it is a 1x1 conv classifier, else give the model an nn.Linear one'}."
    )


def _is_conv_head(module: nn.Module) -> bool:
    """A 1x1 convolution used as classifier (SqueezeNet); only accepted when named by ``head=``."""
    return isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)


def find_head(model: nn.Module, head: str | None) -> str:
    """The classifier's attribute path: ``head`` if given, else the last Linear, if unambiguous.

    "Unambiguous" means nothing with parameters comes after that Linear in module order: otherwise
    (a norm after the classifier, a head defined before the body) guessing could silently replace a
    hidden layer, so we ask instead.
    """
    if head is not None:
        try:
            module = model.get_submodule(head)
        except AttributeError:
            raise _head_error(model, f"head={head!r} is not a submodule") from None
        if not isinstance(module, nn.Linear) and not _is_conv_head(module):
            raise _head_error(
                model, f"head={head!r} is a {type(module).__name__}, not an nn.Linear (or a 1x1 nn.Conv2d)"
            )
        return head
    linears = _linear_names(model)
    if not linears:
        raise _head_error(model, "no nn.Linear classifier found")
    leaves = _leaves_with_params(model)
    last = linears[-1]
    if leaves and leaves[-1] != last:
        raise _head_error(
            model,
            f"the last nn.Linear {last!r} is followed by {leaves[-1]!r}, so it is "
            "ambiguous which layer is the classifier",
        )
    return last


def _groups(model: nn.Module) -> list:
    matcher = getattr(model, "group_matcher", None)
    if callable(matcher):
        try:
            return groups_from_matcher(model, matcher(coarse=True))
        except (NotImplementedError, TypeError):
            pass
    return top_level_groups(model)


def build_module(
    model: nn.Module,
    num_classes: int,
    *,
    head: str | None,
    weights: WeightsSource | None,
    in_chans: int,
    image_size: int | tuple[int, int] | None,
) -> Backbone:
    """Use ``model`` as it is (its own weights), with a fresh ``num_classes`` classifier."""
    aux = remove_aux_heads(model)  # GoogLeNet / Inception v3 instances: one logits tensor, always
    head_path = find_head(model, head)
    stem = first_conv(model)
    if in_chans != 3:
        adapt_stem(model, in_chans)
    elif stem is not None:  # default: take the module as built (a 1-channel net stays 1-channel)
        in_chans = stem[1].in_channels
    if weights is not None:
        skip = state_keys_under(model, head_path) + aux
        load_weights(model, weights, skip, f"module/{type(model).__name__}")
    set_submodule(model, head_path, fresh_head(model.get_submodule(head_path), num_classes))
    groups = finalize_groups(_groups(model), param_names_under(model, head_path))
    check_groups(model, groups)
    cfg = getattr(model, "pretrained_cfg", None)
    extra = model.no_weight_decay() if callable(getattr(model, "no_weight_decay", None)) else ()  # type: ignore[operator]
    cls = type(model)
    return Backbone(
        model=model,
        groups=groups,
        data_config=make_data_config(cfg if isinstance(cfg, dict) else None, in_chans, image_size),
        spec=f"module/{cls.__name__}",
        head_path=head_path,
        no_weight_decay=no_weight_decay_names(model, extra),
        build_kwargs={
            "registry": "module",
            "class": f"{cls.__module__}.{cls.__qualname__}",
            "head": head_path,
        },
    )
