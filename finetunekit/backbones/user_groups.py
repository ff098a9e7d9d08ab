"""Layer groups a user names with ``groups=``: attribute paths or glob patterns, one entry per group.

Automatic grouping can only guess at a custom network's stages, and sometimes a user wants coarser or
finer groups than timm's; ``groups=`` settles it. The entries are checked as strictly as our own
groups (every parameter in exactly one group, the new classifier alone and last), because a parameter
silently left out of every group would never be trained or frozen as intended.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from torch import nn

from ..errors import ConfigError
from .base import LayerGroup
from .grouping import _unique

GroupEntry = str | Sequence[str]
SHOWN = 6  # parameter names listed in an error before "... and N more"


def _patterns(entry: object, index: int) -> list[str]:
    patterns = [entry] if isinstance(entry, str) else entry
    if (
        not isinstance(patterns, (list, tuple))
        or not patterns
        or not all(isinstance(p, str) and p for p in patterns)
    ):
        raise ConfigError(
            f"groups[{index}]={entry!r}: expected an attribute path or glob pattern (e.g. 'layer1', "
            "'blocks.[0-5]', 'stages.*'), or a list of them for one group. Fix: groups=['stem', "
            "'layer1', ...], one entry per group, input -> head."
        )
    return list(patterns)


def matches(param: str, pattern: str) -> bool:
    """``layer1`` matches ``layer1.0.conv.weight`` (a module path); globs match names or modules."""
    return (
        param == pattern
        or param.startswith(pattern + ".")
        or fnmatch.fnmatchcase(param, pattern)
        or fnmatch.fnmatchcase(param, pattern + ".*")
    )


def _shown(names: list[str]) -> str:
    more = f" ... and {len(names) - SHOWN} more" if len(names) > SHOWN else ""
    return f"{names[:SHOWN]}{more}"


def _match_entries(names: list[str], entries: Sequence[GroupEntry]) -> list[list[str]]:
    matched = []
    for i, entry in enumerate(entries):
        patterns = _patterns(entry, i)
        params = [n for n in names if any(matches(n, p) for p in patterns)]
        if not params:
            raise ConfigError(
                f"groups[{i}]={entry!r} matches no parameter. Expected attribute paths or globs over "
                f"parameter names, which look like {names[:3]}. Fix: check the spelling against "
                "[n for n, _ in model.named_parameters()]."
            )
        matched.append(params)
    return matched


def _check_disjoint(matched: list[list[str]], entries: Sequence[GroupEntry]) -> None:
    owner: dict[str, int] = {}
    double = []
    for i, params in enumerate(matched):
        for n in params:
            if n in owner:
                j = owner[n]
                double.append(f"{n} (groups[{j}]={entries[j]!r} and groups[{i}]={entries[i]!r})")
            owner[n] = i
    if double:
        raise ConfigError(
            f"groups= puts {len(double)} parameters in two groups: {_shown(double)}. Expected every "
            "parameter in exactly one group. Fix: make the entries more specific, e.g. 'blocks.[0-5]' "
            "and 'blocks.[6-9]' instead of 'blocks.*' twice."
        )


def _place_head(matched: list[list[str]], head: list[str], entries: Sequence[GroupEntry]) -> bool:
    """True if the head must be appended; raise if an entry mixes it with other parameters."""
    head_set = set(head)
    holders = [i for i, params in enumerate(matched) if head_set & set(params)]
    if not holders:
        return True
    last = len(matched) - 1
    if holders == [last] and set(matched[last]) == head_set:
        return False
    raise ConfigError(
        f"groups= puts the classifier {head} into groups[{holders[0]}]={entries[holders[0]]!r}"
        f"{' with other parameters' if holders == [last] else ', which is not the last group'}. "
        "Expected the new classifier alone in the last group (it is freshly initialized; 'train the "
        "head first' must mean only it). Fix: leave it out (a 'head' group is appended) or make the "
        "last entry exactly its path."
    )


def groups_from_spec(model: nn.Module, entries: Sequence[GroupEntry], head: list[str]) -> list[LayerGroup]:
    """Groups from ``entries`` (input -> head); ``head`` are the new classifier's parameter names."""
    if isinstance(entries, str) or not isinstance(entries, (list, tuple)) or not entries:
        raise ConfigError(
            f"groups={entries!r}: expected a non-empty list with one attribute path or glob per group, "
            "input -> head. Fix: e.g. groups=['stem', 'layer1', 'layer2', 'layer3', 'layer4']."
        )
    names = [n for n, _ in model.named_parameters()]
    matched = _match_entries(names, entries)
    _check_disjoint(matched, entries)
    append_head = _place_head(matched, head, entries)
    covered = {n for params in matched for n in params} | set(head)
    uncovered = [n for n in names if n not in covered]
    if uncovered:
        raise ConfigError(
            f"groups= leaves {len(uncovered)} parameters in no group: {_shown(uncovered)}. Expected "
            "every parameter in exactly one group (an uncovered one would be neither trained nor "
            "frozen on purpose). Fix: add entries for them, or widen one, e.g. 'layer4*'."
        )
    labels = [e if isinstance(e, str) else "+".join(e) for e in entries]
    groups = [LayerGroup(label, params) for label, params in zip(_unique(labels), matched, strict=True)]
    return [*groups, LayerGroup("head", list(head))] if append_head else groups
