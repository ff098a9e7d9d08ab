"""What every backbone adapter returns: a model with a fresh head, ordered layer groups, a data config.

The rest of the library only ever sees :class:`Backbone`, so timm, torchvision and plain modules look
alike to strategies, the optimizer and the data pipeline.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class DataConfig:
    """Preprocessing the weights were trained with (timm ``pretrained_cfg`` vocabulary)."""

    input_size: tuple[int, int, int] = (3, 224, 224)  # (C, H, W)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    crop_pct: float = 0.875

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        return cls(
            input_size=tuple(d["input_size"]),
            mean=tuple(d["mean"]),
            std=tuple(d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


@dataclass
class LayerGroup:
    """A contiguous slice of the network that strategies freeze, unfreeze and scale together."""

    name: str
    param_names: list[str] = field(default_factory=list)

    def num_params(self, model: nn.Module) -> int:
        params = dict(model.named_parameters())
        return sum(params[n].numel() for n in self.param_names)


@dataclass
class Backbone:
    """A classifier ready for fine-tuning.

    ``groups`` are ordered input -> head; the last group is exactly the new classifier's parameters;
    every parameter of ``model`` is in exactly one group (checked by :func:`check_groups`).
    """

    model: nn.Module
    groups: list[LayerGroup]
    data_config: DataConfig
    spec: str  # canonical id, e.g. "timm/resnet18", "torchvision/resnet18", "module/MyNet"
    head_path: str  # attribute path of the classifier module, e.g. "fc", "classifier.1"
    no_weight_decay: set[str] = field(default_factory=set)  # param names exempt from weight decay
    build_kwargs: dict[str, Any] = field(default_factory=dict)  # what rebuilds it (for save/load)


def check_groups(model: nn.Module, groups: list[LayerGroup]) -> None:
    """Assert that every parameter sits in exactly one group (docs/backbones.md: layer groups)."""
    names = [n for n, _ in model.named_parameters()]
    seen: dict[str, str] = {}
    for g in groups:
        for n in g.param_names:
            if n in seen:
                raise AssertionError(f"parameter {n!r} is in groups {seen[n]!r} and {g.name!r}")
            seen[n] = g.name
    missing = [n for n in names if n not in seen]
    extra = [n for n in seen if n not in set(names)]
    if missing or extra:
        raise AssertionError(
            f"layer groups do not cover the model: missing {missing[:5]}, unknown {extra[:5]}"
        )
    if any(not g.param_names for g in groups):
        raise AssertionError(f"empty layer group in {[g.name for g in groups]}")
