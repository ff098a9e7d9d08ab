"""Optimizer construction and the one place a plan is applied to the model and optimizer.

Every layer group is in the optimizer from the start (two param groups each: with and
without weight decay). Freezing only flips ``requires_grad`` and clears the group's grads and optimizer
state, so LR schedulers, checkpoints and DDP always see the same param groups.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from finetunekit._norms import BATCH_NORMS
from finetunekit.backbones.base import LayerGroup
from finetunekit.errors import ConfigError
from finetunekit.strategies.base import Plan

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": lambda params, **kw: torch.optim.SGD(params, momentum=0.9, nesterov=True, **kw),
}


def build_param_groups(
    model: nn.Module, groups: Sequence[LayerGroup], no_weight_decay: set[str], weight_decay: float
) -> list[dict[str, Any]]:
    """One optimizer param group per (layer group, decay or not); biases and norms get no decay."""
    params = dict(model.named_parameters())
    out: list[dict[str, Any]] = []
    for index, group in enumerate(groups):
        decay = [params[n] for n in group.param_names if n not in no_weight_decay]
        no_decay = [params[n] for n in group.param_names if n in no_weight_decay]
        for suffix, plist, wd in (("", decay, weight_decay), ("/no_decay", no_decay, 0.0)):
            if plist:
                out.append(
                    {"params": plist, "weight_decay": wd, "group_index": index, "name": group.name + suffix}
                )
    return out


def make_optimizer(
    optimizer: str | Callable[..., torch.optim.Optimizer], param_groups: list[dict[str, Any]], lr: float
) -> torch.optim.Optimizer:
    """compile()'s ``optimizer=``: a name or a torch optimizer class (or any factory taking params, lr)."""
    if isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            "optimizer= got an optimizer instance; pass its class instead (e.g. optimizer=torch.optim.SGD) "
            "so finetunekit can create one param group per layer group, which strategies need"
        )
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer={optimizer!r} is unknown; expected one of {sorted(OPTIMIZERS)} or a "
                f"torch.optim.Optimizer class"
            )
        factory = OPTIMIZERS[key]
    elif callable(optimizer):
        factory = optimizer
    else:
        raise ConfigError(f"optimizer={optimizer!r} is not a name or an optimizer class")
    return factory(param_groups, lr=lr)


def group_params(
    model: nn.Module, groups: Sequence[LayerGroup], trainable: set[str] | None = None
) -> list[list[nn.Parameter]]:
    """The parameters the plan switches per group: all of them, or those in ``trainable`` (a
    strategy's :meth:`~finetunekit.strategies.Strategy.trainable_params`)."""
    params = dict(model.named_parameters())
    return [[params[n] for n in g.param_names if trainable is None or n in trainable] for g in groups]


def freeze_outside(model: nn.Module, trainable: set[str] | None) -> None:
    """Freeze, once and for the whole run, every parameter a strategy's filter leaves out (they stay in
    the optimizer, like a frozen group's, but no plan opens them)."""
    if trainable is None:
        return
    for name, p in model.named_parameters():
        if name not in trainable:
            p.requires_grad_(False)


def effective_plan(plan: Plan, params_by_group: list[list[nn.Parameter]]) -> Plan:
    """A group whose filter leaves it nothing to train is frozen (so the feature cache may cut above it,
    and summary() says so); without a filter every group has parameters and the plan is unchanged."""
    return [None if not params else scale for scale, params in zip(plan, params_by_group, strict=True)]


def norm_modules_by_group(model: nn.Module, groups: Sequence[LayerGroup]) -> list[list[nn.Module]]:
    """BatchNorm modules of each layer group, found by the group of the module's own parameters or,
    for affine-free norms, of the nearest parameter that shares its name prefix."""
    owner = {n: i for i, g in enumerate(groups) for n in g.param_names}
    out: list[list[nn.Module]] = [[] for _ in groups]
    for name, module in model.named_modules():
        if isinstance(module, BATCH_NORMS):
            index = _owner_of(name, owner)
            if index is not None:
                out[index].append(module)
    return out


def _owner_of(module_name: str, owner: dict[str, int]) -> int | None:
    direct = owner.get(f"{module_name}.weight")
    if direct is not None:
        return direct
    prefix = module_name
    while prefix:
        prefix = prefix.rpartition(".")[0]
        hits = [i for n, i in owner.items() if n.startswith(prefix + ".")] if prefix else []
        if hits:
            return hits[0]
    return None


def apply_plan(
    plan: Plan, params_by_group: list[list[nn.Parameter]], optimizer: torch.optim.Optimizer
) -> None:
    """Make ``requires_grad`` follow the plan; a group that becomes frozen loses its grads and its
    optimizer state (momentum must not leak across a freeze)."""
    for scale, params in zip(plan, params_by_group, strict=True):
        trainable = scale is not None
        for p in params:
            if p.requires_grad and not trainable:
                p.grad = None
                optimizer.state.pop(p, None)
            p.requires_grad_(trainable)


def set_frozen_norms_to_eval(plan: Plan, norms_by_group: list[list[nn.Module]], train_bn: bool) -> None:
    """Keras semantics: BN in frozen groups uses its running statistics and does not update them.
    Called after every ``model.train()``, because ``train()`` flips every module back."""
    if train_bn:
        return
    for scale, norms in zip(plan, norms_by_group, strict=True):
        if scale is None:
            for m in norms:
                m.eval()


def write_lrs(optimizer: torch.optim.Optimizer, base_lr: float, multiplier: float, plan: Plan) -> None:
    """The single place learning rates are written: base x schedule x group scale (0 when frozen)."""
    for pg in optimizer.param_groups:
        scale = plan[pg["group_index"]]
        pg["lr"] = base_lr * multiplier * (scale or 0.0)
