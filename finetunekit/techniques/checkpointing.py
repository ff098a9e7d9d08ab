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


def _in_backward() -> bool:
    """True while autograd executes a backward pass (where non-reentrant checkpointing recomputes)."""
    return bool(torch._C._current_graph_task_id() != -1)


def _bn_pre(module: Any, _args: Any) -> None:
    if module.training and _in_backward():
        tracked = getattr(module, "num_batches_tracked", None)
        saved = tracked.clone() if isinstance(tracked, torch.Tensor) else None
        module._finetunekit_saved = (module.momentum, saved)
        module.momentum = 0.0  # running = running * 1 + batch * 0: exactly unchanged


def _bn_post(module: Any, _args: Any, _out: Any) -> None:
    saved = module.__dict__.pop("_finetunekit_saved", None)
    if saved is not None:
        module.momentum, tracked = saved
        if tracked is not None:
            module.num_batches_tracked.copy_(tracked)


def _set_bn_guard(model: nn.Module, enable: bool) -> None:
    for handle in getattr(model, _HOOKS, []):
        handle.remove()
    handles = []
    if enable:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                handles += [m.register_forward_pre_hook(_bn_pre), m.register_forward_hook(_bn_post)]
    object.__setattr__(model, _HOOKS, handles)


def set_grad_checkpointing(model: nn.Module, backbone: Backbone, enable: bool) -> str:
    """Turn checkpointing on or off for ``model``; returns what it did, for ``summary()``."""
    if not isinstance(enable, bool):
        raise ConfigError(f"grad_checkpointing={enable!r} is invalid; expected True or False")
    _set_bn_guard(model, enable)
    timm_switch = getattr(model, "set_grad_checkpointing", None)
    if callable(timm_switch):
        timm_switch(enable)
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
    shown = ", ".join(names[:3]) + (f", ... ({len(names)} modules)" if len(names) > 3 else "")
    return f"on: torch.utils.checkpoint around {shown}"
