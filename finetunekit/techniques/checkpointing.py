"""Gradient checkpointing (``compile(grad_checkpointing=True)``): keep fewer activations, recompute them.

Training keeps every layer's activations until the backward pass; for a ViT-B/L at a useful batch size
they, not the weights, fill the accelerator's memory. Checkpointing keeps only the input of each
checkpointed block and runs the block again during backward, trading about one extra forward pass per
step for activation memory that grows with one block instead of the whole network.

Mechanism: timm models have their own switch, ``model.set_grad_checkpointing()`` (non-reentrant
``torch.utils.checkpoint`` over their blocks), which is used when present. Other models (torchvision,
plain modules) get non-reentrant ``torch.utils.checkpoint`` around each layer group's module: the module
that holds exactly the group's parameters (``layer3`` of a ResNet, one encoder layer of a torchvision
ViT), else each composite child of it that lies wholly inside the group. The head is never checkpointed.

What stays exact: non-reentrant checkpointing restores the RNG for the recomputation (same dropout masks),
works when the block's input needs no gradient (a frozen stem under LoRA), and under DDP. BatchNorm in
train mode would update its running statistics twice per step (once more in the recomputation); a
hook makes the recomputation leave them as they were, so statistics, and so evaluation, equal the run
without checkpointing. Evaluation and prediction (no gradients) never recompute anything.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.utils.checkpoint
from torch import nn

from finetunekit._norms import BATCH_NORMS
from finetunekit.backbones.base import Backbone
from finetunekit.backbones.grouping import group_modules
from finetunekit.errors import ConfigError

_HOOKS = "_finetunekit_ckpt_bn_hooks"


class _Checkpointed:
    """A module's forward run under ``torch.utils.checkpoint`` while gradients are recorded. Set as the
    module's instance ``forward``; it refers to the module itself, so a deepcopy (EMA, feature cache
    checks) checkpoints the copy, not the original."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        forward = type(self.module).forward.__get__(self.module)
        if not torch.is_grad_enabled():
            return forward(*args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


class _BatchNormGuard:
    """Keeps BatchNorm statistics unchanged by the recomputation inside backward.

    A norm layer that runs in train mode while its model is not inside its own forward call is being
    recomputed by checkpointing (backward runs after forward returned): for that call momentum is 0
    (running = running * 1 + batch * 0: exactly unchanged) and the batch counter is put back. The model's
    forward hooks mark the span of a forward with public module hooks only (torch exposes no public
    "inside backward" query). The hooks are methods of one guard object, so a deepcopy of the model
    (EMA, feature-cache checks) gets its own guard that watches the copy.
    """

    def __init__(self) -> None:
        self.depth = 0

    def enter(self, _module: Any, _args: Any) -> None:
        self.depth += 1

    def leave(self, _module: Any, _args: Any, _out: Any) -> None:
        self.depth -= 1

    def norm_pre(self, module: Any, _args: Any) -> None:
        if module.training and self.depth == 0:
            tracked = getattr(module, "num_batches_tracked", None)
            saved = tracked.clone() if isinstance(tracked, torch.Tensor) else None
            module._finetunekit_saved = (module.momentum, saved)
            module.momentum = 0.0

    def norm_post(self, module: Any, _args: Any, _out: Any) -> None:
        saved = module.__dict__.pop("_finetunekit_saved", None)
        if saved is not None:
            module.momentum, tracked = saved
            if tracked is not None:
                module.num_batches_tracked.copy_(tracked)


def _set_bn_guard(model: nn.Module, norms: list[nn.Module]) -> None:
    """Guard ``norms`` (the BatchNorms inside checkpointed modules; none turns the guard off). The
    head is never checkpointed, so its norms update normally even when they run outside the model's
    forward (the feature cache runs the head alone)."""
    for handle in getattr(model, _HOOKS, []):
        handle.remove()
    handles = []
    if norms:
        guard = _BatchNormGuard()
        handles += [
            model.register_forward_pre_hook(guard.enter),
            model.register_forward_hook(guard.leave, always_call=True),  # also when forward raises
        ]
        for m in norms:
            handles += [m.register_forward_pre_hook(guard.norm_pre), m.register_forward_hook(guard.norm_post)]
    object.__setattr__(model, _HOOKS, handles)


def _batch_norms(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, BATCH_NORMS)]


def _holds(module: nn.Module, name: str, param_names: set[str]) -> bool:
    return any(f"{name}.{p}" in param_names for p, _ in module.named_parameters(recurse=False))


def set_grad_checkpointing(model: nn.Module, backbone: Backbone, enable: bool) -> str:
    """Turn checkpointing on or off for ``model``; returns what it did, for ``summary()``."""
    if not isinstance(enable, bool):
        raise ConfigError(f"grad_checkpointing={enable!r} is invalid; expected True or False")
    _set_bn_guard(model, [])
    timm_switch = getattr(model, "set_grad_checkpointing", None)
    if callable(timm_switch):
        timm_switch(enable)
        if enable:  # timm checkpoints its blocks; every norm outside the head may be recomputed
            head = set(backbone.groups[-1].param_names) if backbone.groups else set()
            _set_bn_guard(model, [m for name, m in _batch_norms(model) if not _holds(m, name, head)])
        return "on: timm's set_grad_checkpointing" if enable else "off"
    modules = dict(model.named_modules())
    for m in modules.values():
        if isinstance(m.__dict__.get("forward"), _Checkpointed):
            del m.forward
    if not enable:
        return "off"
    names = [n for g in backbone.groups[:-1] for n in group_modules(model, g.param_names)]
    if not names:
        raise ConfigError(
            f"grad_checkpointing=True: no layer group of {type(model).__name__} is a module with "
            f"submodules that could be checkpointed; give FineTuner(groups=[...]) module paths per group"
        )
    for name in names:
        modules[name].forward = _Checkpointed(modules[name])
    inside = tuple(f"{n}." for n in names)
    _set_bn_guard(model, [m for name, m in _batch_norms(model) if name in names or name.startswith(inside)])
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} modules)" if len(names) > 3 else "")
    return f"on: torch.utils.checkpoint around {shown}"
