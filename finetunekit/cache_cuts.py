"""Where the feature cache cuts a model in two: a frozen prefix that runs once per sample, and a suffix
that trains on the prefix's cached outputs.

Two cuts, tried in this order:

- **head cut** (only the head trains): cache the head's *input*. The suffix is the head, the
  parameter-free modules right before it (a torchvision classifier's ``Dropout``) and timm's functional
  head dropout. Smallest features: one vector per sample.
- **prefix cut** (any plan whose bottom groups are frozen, e.g. GradualUnfreeze's later phases): cache
  the *output* of the last frozen module that finishes before the first trainable module starts (a
  module with frozen parameters, or a parameter-free one outside every module that holds trainable
  ones: a pooling that opens a trainable block's shortcut branch runs first but is not its input). The
  suffix is the whole model with every frozen module that ran before that point short-circuited: its
  ``forward`` returns a free placeholder (zeros expanded to the shape it returned), and the last one
  returns the cached tensor. The model's own ``forward`` runs unchanged, so this works for any
  architecture whose trainable part reads nothing from the prefix but that one tensor (ResNet stages,
  EfficientNet blocks, ViT blocks); for anything else (a skip connection across the cut, a trainable
  position embedding used by the root module) the exactness check in ``FeatureCache`` switches the cache
  off. Forward hooks on a short-circuited module see the placeholder, not a real activation.

The split is found from what actually runs (module hooks on one forward of a few samples), not from
module names, so it needs no per-architecture table.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class NotExact(Exception):
    """The cache would change results (or cannot be built); the message says why, for summary()."""


@dataclass
class Cut:
    """A split of the model: ``at``'s input (head cut) or output (prefix cut) is cached, and ``suffix``
    maps a batch of cached tensors to the model's output."""

    at: nn.Module
    on_output: bool
    suffix: nn.Module
    where: str  # summary(): what trained on what


class HeadSuffix(nn.Module):
    """What runs on cached head inputs: parameter-free modules before the head, timm's head dropout, head."""

    def __init__(self, pre: Sequence[nn.Module], dropout_p: float, head: nn.Module) -> None:
        super().__init__()
        self.pre = nn.ModuleList(pre)
        self.dropout_p = dropout_p
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.pre:
            x = module(x)
        if self.dropout_p > 0:
            x = F.dropout(x, self.dropout_p, self.training)
        return self.head(x)


def head_cut(model: nn.Module, head_path: str) -> Cut:
    """In a Sequential, parameter-free siblings just before the head (Dropout, Flatten) join the suffix,
    so they run live on the cached features."""
    head = model.get_submodule(head_path)
    parent_path, _, name = head_path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    pre: list[nn.Module] = []
    if isinstance(parent, nn.Sequential):
        children = list(parent.named_children())
        index = [n for n, _ in children].index(name)
        while index > 0 and not any(True for _ in children[index - 1][1].parameters()):
            index -= 1
            pre.insert(0, children[index][1])
    at = pre[0] if pre else head
    suffix = HeadSuffix(pre, _timm_head_dropout(model), head)
    return Cut(at, False, suffix, "the head trained on cached backbone features")


def _timm_head_dropout(model: nn.Module) -> float:
    """timm applies its head dropout between pooling and classifier, functionally (``drop_rate``, CNNs)
    or as a ``head_drop`` module (ViTs); the suffix replays it. The train-mode check confirms the guess."""
    if not hasattr(model, "forward_head"):
        return 0.0
    head_drop = getattr(model, "head_drop", None)
    if isinstance(head_drop, nn.Dropout):
        return float(head_drop.p)
    drop = getattr(model, "drop_rate", 0.0)
    return float(drop) if isinstance(drop, (int, float)) else 0.0


# ------------------------------------------------------------------------------------------ prefix cut
Spec = tuple[torch.Size, torch.dtype]  # per-sample shape and dtype of a tensor


class PrefixSkip(nn.Module):
    """The model with its frozen prefix short-circuited; called on a batch of cached prefix outputs.

    ``skipped`` are the frozen modules that ran before the cut (outermost only), each with the per-sample
    shape and dtype it returned; ``last`` is the one whose output was cached. Their ``forward`` is replaced
    only for the duration of one call, so the model is untouched outside it.
    """

    def __init__(self, model: nn.Module, skipped: Sequence[tuple[nn.Module, Spec]], last: nn.Module,
                 input_spec: Spec) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        # Plain tuples: registering these as submodules would list the model's modules twice.
        self._skipped = tuple(skipped)
        self._last = (last,)
        self._input_spec = input_spec

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        n, device = cached.shape[0], cached.device

        def placeholder(spec: Spec) -> torch.Tensor:  # expand: no memory, whatever the shape
            return torch.zeros((), dtype=spec[1], device=device).expand(n, *spec[0])

        outputs: list[tuple[nn.Module, Callable[[], torch.Tensor]]]
        outputs = [(m, functools.partial(placeholder, spec)) for m, spec in self._skipped]
        outputs.append((self._last[0], lambda: cached))
        with _short_circuit(outputs):
            return self.model(placeholder(self._input_spec))


@contextmanager
def _short_circuit(outputs: Sequence[tuple[nn.Module, Callable[[], torch.Tensor]]]) -> Iterator[None]:
    """Each module's forward returns its given output instead of computing it, until the block ends."""
    saved = [(m, m.__dict__.get("forward")) for m, _ in outputs]
    for m, make in outputs:
        m.forward = lambda *_a, _make=make, **_k: _make()
    try:
        yield
    finally:
        for m, previous in saved:
            if previous is None:
                del m.forward
            else:
                m.forward = previous


def prefix_cut(model: nn.Module, x: torch.Tensor, autocast: Callable[[], AbstractContextManager[Any]]) -> Cut:
    """Find the frozen prefix from one forward pass on ``x`` (a few samples, model in the mode the cache is
    built in). Raises NotExact when there is nothing to cut off or the cut cannot be replayed."""
    trace = _trace(model, x, autocast)
    modules = dict(model.named_modules())
    owners = [n for n, m in modules.items() if any(p.requires_grad for p in m.parameters(recurse=False))]
    if "" in owners:
        raise NotExact(
            "the model's own forward uses trainable parameters (e.g. a position embedding), so no frozen "
            "prefix can be cut off"
        )
    first = min((trace.start[n] for n in owners if n in trace.start), default=None)
    if first is None:
        raise NotExact("no trainable layer ran in the forward pass")
    done = {n for n, end in trace.end.items() if trace.calls[n] == 1 and end < first}
    outer = sorted((n for n in done if not any(a in done for a in _ancestors(n))), key=trace.end.__getitem__)
    # The cut is a frozen layer, or a parameter-free module outside every trainable container: a pooling
    # that opens a trainable block's shortcut branch (MaxViT) runs first but is not the block's input.
    holders = {n for n, m in modules.items() if any(p.requires_grad for p in m.parameters())}
    cuts = [n for n in outer if _has_params(modules[n]) or n.rpartition(".")[0] not in holders]
    if not cuts:
        raise NotExact("no frozen layer runs before the first trainable one")
    last = cuts[-1]
    outer = [n for n in outer if trace.end[n] <= trace.end[last]]  # later ones run live on the cut
    for name in outer:
        if trace.spec[name] is None:
            raise NotExact(f"frozen module '{name}' returns a {trace.kind[name]}, not a tensor")
    skipped = [(modules[n], trace.spec[n]) for n in outer[:-1]]
    suffix = PrefixSkip(model, skipped, modules[last], (x.shape[1:], x.dtype))  # type: ignore[arg-type]
    return Cut(modules[last], True, suffix, f"the layers after '{last}' trained on its cached outputs")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _ancestors(name: str) -> Iterator[str]:
    while "." in name:
        name = name.rpartition(".")[0]
        yield name


@dataclass
class _Trace:
    start: dict[str, int]
    end: dict[str, int]
    calls: Counter[str]
    spec: dict[str, Spec | None]
    kind: dict[str, str]


@torch.no_grad()
def _trace(model: nn.Module, x: torch.Tensor, autocast: Callable[[], AbstractContextManager[Any]]) -> _Trace:
    """When each submodule started and ended (one counter for both), how often it ran, what it returned."""
    tick = itertools.count()
    trace = _Trace({}, {}, Counter(), {}, {})

    def pre(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any) -> None:
            trace.start.setdefault(name, next(tick))

        return hook

    def post(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, _args: Any, out: Any) -> None:
            trace.end[name] = next(tick)
            trace.calls[name] += 1
            is_tensor = isinstance(out, torch.Tensor)
            trace.spec[name] = (out.shape[1:], out.dtype) if is_tensor else None
            trace.kind[name] = type(out).__name__

        return hook

    handles = []
    for name, module in model.named_modules():
        if name:
            handles += [module.register_forward_pre_hook(pre(name)), module.register_forward_hook(post(name))]
    try:
        with autocast():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return trace
