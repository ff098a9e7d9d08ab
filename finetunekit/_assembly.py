"""How a FineTuner is put together and described: layer-group info, the config saved next to the weights,
a backbone rebuilt from a saved folder, the summary text. Beside :mod:`finetunekit.tuner` in the top
layer, so the facade stays a list of short methods."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finetunekit.backbones import build_backbone, rebuild_backbone
from finetunekit.backbones.base import Backbone, DataConfig
from finetunekit.errors import CheckpointError
from finetunekit.saving import model_folder as saving
from finetunekit.strategies import Plan, Strategy
from finetunekit.techniques.gap import gap_line
from finetunekit.tools.summary import format_summary


@dataclass(frozen=True)
class GroupInfo:
    """What ``ft.groups`` shows: a layer group's name, size, and whether it trains now."""

    name: str
    num_params: int
    param_names: tuple[str, ...]
    trainable: bool = True  # the current plan's requires_grad (the epoch-0 plan until fit)

    def __repr__(self) -> str:
        return f"GroupInfo(name={self.name!r}, num_params={self.num_params:,}, trainable={self.trainable})"


def group_infos(
    model: nn.Module, backbone: Backbone, params_by_group: Sequence[Sequence[nn.Parameter]]
) -> list[GroupInfo]:
    """Every group's size (all its parameters) and whether any of its trainable ones trains now."""
    return [
        GroupInfo(g.name, g.num_params(model), tuple(g.param_names), any(p.requires_grad for p in ps))
        for g, ps in zip(backbone.groups, params_by_group, strict=True)
    ]


def model_config(
    backbone: Backbone, num_classes: int, in_chans: int, class_names: list[str] | None, strategy: Strategy
) -> dict[str, Any]:
    """What ``save`` writes next to the weights, and what a resume compares."""
    return {
        "backbone": backbone.build_kwargs, "spec": backbone.spec, "num_classes": num_classes,
        "in_chans": in_chans, "data_config": backbone.data_config.to_dict(), "class_names": class_names,
        "strategy": strategy.config(),
    }  # fmt: skip


def backbone_from_folder(
    path: str | os.PathLike[str], model: nn.Module | None, *, verify: bool = True
) -> tuple[Backbone, dict[str, torch.Tensor], dict[str, Any]]:
    """(backbone rebuilt without network, saved weights, saved config); ``model`` supplies the module
    of a custom backbone."""
    state, config = saving.load_model_folder(path, verify=verify)
    if config.get("adapters_only"):
        raise CheckpointError(
            f"{str(path)!r} holds LoRA adapters only; build FineTuner(backbone, num_classes, "
            f"strategy=LoRA(...)) and call ft.load_adapters({str(path)!r})"
        )
    num_classes, saved = int(config["num_classes"]), config["backbone"]
    if model is not None:
        built = build_backbone(model, num_classes, pretrained=False, in_chans=int(config["in_chans"]),
                               head=saved.get("head"), groups=saved.get("groups"))  # fmt: skip
    else:
        built = rebuild_backbone(saved, num_classes)
    built.data_config = DataConfig.from_dict(config["data_config"])
    return built, state, config


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Any, config: dict[str, Any]) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {str(path)!r} do not fit {config.get('spec')!r} with {config['num_classes']} "
            f"classes: {str(e).splitlines()[0]}; was the folder written by another version or model?"
        ) from e


def summary_text(
    spec: str, groups: list[GroupInfo], plans: list[Plan], base_lr: float | None, strategy: Strategy,
    norms_by_group: Any, open_ended: bool, restarts: list[int], cache_status: str, history: Any,
    trains: list[int] | None = None, checkpointing: str = "off",
) -> str:  # fmt: skip
    text = format_summary(spec, groups, plans, base_lr, strategy, norms_by_group, open_ended=open_ended,
                          restarts=restarts, trains=trains)  # fmt: skip
    text = f"{text}\nfeature cache: {cache_status}\ngradient checkpointing: {checkpointing}"
    gaps = gap_line(history)
    return text if gaps is None else f"{text}\ntrain/validation gap, {gaps}"
