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
from typing import Any, NamedTuple

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
    pick: Callable[[Any], Any] = lambda out: out  # the tensor to cache, from what ``at`` returned


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
class TensorSpec(NamedTuple):
    """A batch-first tensor a skipped module returned: its per-sample shape and dtype."""

    shape: torch.Size
    dtype: torch.dtype


class Const(NamedTuple):
    """A non-tensor value a skipped module returned next to its tensors (e.g. MViT's feature-map size)."""

    value: Any


# What a skipped module returned: a tensor, a constant, or a tuple/list of those (nested).
Spec = TensorSpec | Const | tuple[Any, ...] | list[Any]
_CONSTANTS = (int, float, bool, str, type(None), torch.Size)


def spec_of(out: Any, batch: int) -> Spec | None:
    """``out``'s structure with its tensors as TensorSpecs, or None when it cannot be replayed (a tensor
    that is not batch-first, an object). Constants are recorded as they are: the exactness check, on a
    larger batch than the trace's, catches one that depended on the batch."""
    if isinstance(out, torch.Tensor):
        ok = out.ndim > 0 and out.shape[0] == batch
        return TensorSpec(out.shape[1:], out.dtype) if ok else None
    if isinstance(out, _CONSTANTS):
        return Const(out)
    if isinstance(out, (tuple, list)) and type(out) in (tuple, list):
        items = [spec_of(o, batch) for o in out]
        return None if any(i is None for i in items) else type(out)(items)
    return None


def n_tensors(spec: Spec) -> int:
    if isinstance(spec, TensorSpec):
        return 1
    return 0 if isinstance(spec, Const) else sum(n_tensors(s) for s in spec)


def pick_tensor(spec: Spec, out: Any) -> Any:
    """The one tensor in ``out`` (structured as ``spec``, which has exactly one TensorSpec)."""
    if isinstance(spec, TensorSpec):
        return out
    assert not isinstance(spec, Const)
    return next(pick_tensor(s, o) for s, o in zip(spec, out, strict=True) if n_tensors(s))


def rebuild(spec: Spec, tensor: Callable[[TensorSpec], torch.Tensor]) -> Any:
    """``spec``'s structure with its constants as recorded and ``tensor(leaf)`` for each tensor."""
    if isinstance(spec, TensorSpec):
        return tensor(spec)
    if isinstance(spec, Const):
        return spec.value
    return type(spec)(rebuild(s, tensor) for s in spec)


def placeholder(spec: Spec, n: int, device: torch.device) -> Any:
    """A free stand-in with ``spec``'s structure: zeros expanded to ``n`` samples (no memory)."""
    return rebuild(spec, lambda t: torch.zeros((), dtype=t.dtype, device=device).expand(n, *t.shape))


class PrefixSkip(nn.Module):
    """The model with its frozen prefix short-circuited; called on a batch of cached prefix outputs.

    ``skipped`` are the frozen modules that ran before the cut (outermost only), each with the structure
    it returned; ``last`` is the one whose output was cached (its one tensor; ``last_spec`` is the whole
    output, e.g. MViT's ``(x, feature_size)``). Their ``forward`` is replaced only for the duration of
    one call, so the model is untouched outside it.
    """

    def __init__(self, model: nn.Module, skipped: Sequence[tuple[nn.Module, Spec]], last: nn.Module,
                 last_spec: Spec, input_spec: TensorSpec) -> None:  # fmt: skip
        super().__init__()
        self.model = model
        # Plain tuples: registering these as submodules would list the model's modules twice.
        self._skipped = tuple(skipped)
        self._last = (last, last_spec)
        self._input_spec = input_spec

    def forward(self, cached: torch.Tensor) -> torch.Tensor:
        n, device = cached.shape[0], cached.device
        outputs: list[tuple[nn.Module, Callable[[], Any]]]
        outputs = [(m, functools.partial(placeholder, spec, n, device)) for m, spec in self._skipped]
        last, last_spec = self._last
        outputs.append((last, lambda: rebuild(last_spec, lambda _t: cached)))
        with _short_circuit(outputs):
            return self.model(placeholder(self._input_spec, n, device))


@contextmanager
def _short_circuit(outputs: Sequence[tuple[nn.Module, Callable[[], Any]]]) -> Iterator[None]:
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


def prefix_cut(
    model: nn.Module, x: torch.Tensor, autocast: Callable[[], AbstractContextManager[Any]], back: int = 0
) -> Cut:
    """Find the frozen prefix from one forward pass on ``x`` (a few samples, model in the mode the cache is
    built in). Raises NotExact when there is nothing to cut off or the cut cannot be replayed. ``back``
    picks an earlier cut: a frozen layer that runs inside a trainable block (a LoRA layer's frozen base,
    the norm before it) has the block's input skip past it, so the block's input is the exact cut."""
    trace = _trace(model, x, autocast)
    x_spec = spec_of(x, len(x))
    assert isinstance(x_spec, TensorSpec)
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
    if back >= len(cuts):
        raise NotExact("no frozen layer runs before the first trainable one")
    last = cuts[-1 - back]
    outer = [n for n in outer if trace.end[n] <= trace.end[last]]  # later ones run live on the cut
    for name in outer:
        spec = trace.spec[name]
        if spec is None or (name == last and n_tensors(spec) != 1):
            raise NotExact(f"frozen module '{name}' returns a {trace.kind[name]} that cannot be replayed")
    last_spec = trace.spec[last]
    assert last_spec is not None
    skipped = [(modules[n], trace.spec[n]) for n in outer[:-1]]
    suffix = PrefixSkip(model, skipped, modules[last], last_spec, x_spec)  # type: ignore[arg-type]
    where = f"the layers after '{last}' trained on its cached outputs"
    return Cut(modules[last], True, suffix, where, functools.partial(pick_tensor, last_spec))


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
            trace.spec[name] = spec_of(out, len(x))
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
