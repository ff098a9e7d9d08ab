"""Ordered, named layer groups from timm-style matchers, with the classifier always last and alone.

timm's ``group_matcher`` vocabulary (``{"stem": regex, "blocks": [(regex, None), (regex, (99999,))]}``)
already describes stage boundaries for hundreds of models, so torchvision families and plain modules
reuse it instead of inventing a second format. timm's public ``group_parameters`` does the grouping; this
module only names the groups and enforces our invariant that the last group is exactly the new head.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from finetunekit._norms import NORMS

from .base import LayerGroup

MATCH_PREV = 99999.0
Matcher = dict[str, Any] | Callable[[str], Any]


def groups_from_matcher(model: nn.Module, matcher: Matcher) -> list[LayerGroup]:
    """Group ``model``'s parameters with timm's own algorithm, ordered input -> output."""
    from timm.models import group_parameters  # timm's public API for it

    by_id = group_parameters(model, matcher)
    raw = [list(by_id[i]) for i in sorted(by_id)]
    labels = [_group_label(g, matcher) for g in raw]
    return [LayerGroup(name, params) for name, params in zip(_unique(labels), raw, strict=True)]


def _compiled(matcher: Mapping[str, Any]) -> list[tuple[str, re.Pattern[str], Any]]:
    out = []
    for key, spec in matcher.items():
        if spec is None:
            continue
        specs = spec if isinstance(spec, (list, tuple)) else [(spec, None)]
        out += [(key, re.compile(pattern), suffix) for pattern, suffix in specs]
    return out


def _group_label(params: list[str], matcher: Matcher) -> str:
    """Name a group after the rule that opened it, not the params merged into it (MATCH_PREV).

    A matcher key without captures (``stem``) is already a name. A rule with captures (timm's
    ``blocks``: ``^layer(\\d+)``) is named by the text it matched (``layer1``, ``blocks.3``,
    ``stages.0``), which is the module path a user sees in ``print(model)``.
    """
    if not isinstance(matcher, Mapping):
        return _span_label(params)
    rules = _compiled(matcher)
    for name in params:
        for key, rx, suffix in rules:
            m = rx.match(name)
            if m is None:
                continue
            if suffix is not None:
                break  # merged into a previous group: does not name this one
            return m.group(0).rstrip(".") if any(g is not None for g in m.groups()) else key
    return _span_label(params)


def _span_label(params: list[str]) -> str:
    """A name for a group no rule names: the module path its params share, else the first and last
    top-level modules it spans (``Conv2d_1a_3x3..Conv2d_4a_3x3`` for Inception v3's stem)."""
    prefix = common_module_prefix(params)
    if prefix:
        return prefix
    first, last = params[0].split(".")[0], params[-1].split(".")[0]
    return first if first == last else f"{first}..{last}"


def common_module_prefix(param_names: list[str]) -> str:
    """Longest dotted module path shared by all params (``layer1`` for ``layer1.0.conv1.weight``...)."""
    if not param_names:
        return ""
    parts = [n.split(".")[:-1] for n in param_names]
    prefix: list[str] = []
    for tokens in zip(*parts, strict=False):
        if len(set(tokens)) != 1:
            break
        prefix.append(tokens[0])
    return ".".join(prefix)


def _unique(labels: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}_{seen[label]}")
    return out


_NORMS = NORMS


def _stage_containers(model: nn.Module) -> set[str]:
    """Top-level ``Sequential`` / ``ModuleList`` children that hold stages: at least two elements
    with parameters, each a composite module (a ``stages`` list of blocks, not a ``Conv, BN, ReLU``
    stem), so each element becomes its own group."""
    out = set()
    for name, child in model.named_children():
        if not isinstance(child, (nn.Sequential, nn.ModuleList)):
            continue
        holders = [m for m in child.children() if any(True for _ in m.parameters())]
        if len(holders) >= 2 and all(any(True for _ in m.children()) for m in holders):
            out.add(name)
    return out


def top_level_groups(model: nn.Module) -> list[LayerGroup]:
    """Generic fallback: one group per top-level child, in registration order; a child that is a
    list of stages (see :func:`_stage_containers`) gives one group per stage.

    Children without parameters (pooling, activations) vanish; parameters owned by the root module
    itself (a ``cls_token``) join the group that follows them, since they feed the first layers.
    """
    groups: list[LayerGroup] = []
    pending: list[str] = []
    split = _stage_containers(model)
    norms = {n for n, c in model.named_children() if isinstance(c, _NORMS)}
    for name, _ in model.named_parameters():
        child, dot, rest = name.partition(".")
        if dot and child in split:
            child = f"{child}.{rest.partition('.')[0]}"
        if not dot:
            pending.append(name)
        elif groups and (groups[-1].name == child or child in norms):
            groups[-1].param_names.append(name)  # a lone final norm belongs to the last stage
        else:
            groups.append(LayerGroup(child, [*pending, name]))
            pending = []
    if pending:
        groups.append(LayerGroup("params", pending))
    return groups


def finalize_groups(groups: list[LayerGroup], head_params: list[str]) -> list[LayerGroup]:
    """Make the last group exactly ``head_params`` (named ``head``).

    Whatever else sat in the classifier's group (a final norm, pre-logits, hidden MLP layers of
    VGG / MobileNetV3) is pretrained, so it joins the previous group rather than training with the
    freshly initialized head: "train the head first" must mean only the new layer.
    """
    head = set(head_params)
    had_head_last = bool(groups) and any(n in head for n in groups[-1].param_names)
    body = [LayerGroup(g.name, [n for n in g.param_names if n not in head]) for g in groups]
    if had_head_last and len(body) > 1 and body[-1].param_names:
        body[-2].param_names.extend(body[-1].param_names)
        body.pop()
    body = [g for g in body if g.param_names]
    return [*body, LayerGroup("head", list(head_params))]


def _has_children(module: nn.Module) -> bool:
    return any(True for _ in module.children())


def group_modules(model: nn.Module, param_names: list[str]) -> list[str]:
    """The modules that make up one layer group, for wrapping per group (gradient checkpointing, FSDP
    units): the one module holding exactly its parameters, else its composite children that lie wholly
    inside the group. Leaf layers are left out: wrapping one conv alone gains nothing."""
    inside = set(param_names)
    modules = dict(model.named_modules())
    prefix = common_module_prefix(param_names)

    def wholly_inside(name: str) -> bool:
        return all(f"{name}.{n}" in inside for n, _ in modules[name].named_parameters())

    if prefix and wholly_inside(prefix) and _has_children(modules[prefix]):
        return [prefix]
    parent = modules[prefix] if prefix else model
    out = []
    for child, module in parent.named_children():
        name = f"{prefix}.{child}" if prefix else child
        if _has_children(module) and any(True for _ in module.parameters()) and wholly_inside(name):
            out.append(name)
    return out
