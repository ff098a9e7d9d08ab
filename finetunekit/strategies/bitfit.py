"""BitFit and NormOnly: train a few cheap, well-understood parameters of the backbone plus the new head.

BitFit (Ben Zaken et al., ACL 2022) trains the bias terms; here also the normalization layers' affine
parameters, which are as small and as safe to move (the common vision variant, and what timm users get
from ``model.head`` + biases + norms). ``NormOnly`` trains only the norms' affines (Frankle et al. 2021,
"Training BatchNorm and only BatchNorm"). Both keep every group open at the base LR, so they compose
with GradualUnfreeze / DiscriminativeLR like any plan: ``[BitFit(), DiscriminativeLR(0.5)]``.

The head always trains fully: it is new, and a bias-only head could not learn the classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from finetunekit._norms import NORMS
from finetunekit.backbones.base import LayerGroup
from finetunekit.errors import ConfigError
from finetunekit.strategies.base import Plan, Strategy

NORM_TYPES: tuple[type[nn.Module], ...] = (
    *NORMS,
    nn.LocalResponseNorm,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def norm_param_names(model: nn.Module) -> set[str]:
    """Parameters owned by normalization layers (torch's, and timm's subclasses of them, e.g.
    LayerNorm2d, BatchNormAct2d)."""
    out = set()
    for mname, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            out |= {f"{mname}.{n}" if mname else n for n, _ in module.named_parameters(recurse=False)}
    return out


def _head_names(groups: Sequence[LayerGroup]) -> set[str]:
    return set(groups[-1].param_names)


class _SubsetStrategy(Strategy):
    """Every group open at the base LR; which of its parameters train is :meth:`trainable_params`."""

    what = ""

    def __init__(self, train_bn: bool = False):
        self.train_bn = train_bn

    def plan(self, n_groups: int, epoch: int) -> Plan:
        return [1.0] * n_groups

    def _selected(self, model: nn.Module) -> set[str]:
        raise NotImplementedError

    def trainable_params(self, model: nn.Module, groups: Sequence[LayerGroup]) -> set[str] | None:
        chosen = self._selected(model)
        if not chosen - _head_names(groups):
            raise ConfigError(
                f"{type(self).__name__}() found no {self.what} in the backbone of "
                f"{type(model).__name__}, so only the head would train; use FrozenBackbone() for that, "
                f"or LoRA() / FullFineTune() for a backbone without them"
            )
        return chosen | _head_names(groups)

    def config(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "train_bn": self.train_bn}


class BitFit(_SubsetStrategy):
    """Biases and normalization parameters train (plus the head); every other weight stays pretrained.
    About 0.1-0.2% of a ViT's parameters, so optimizer state and gradients shrink accordingly."""

    what = "biases or normalization layers"

    def _selected(self, model: nn.Module) -> set[str]:
        biases = {n for n, _ in model.named_parameters() if n == "bias" or n.endswith(".bias")}
        return biases | norm_param_names(model)


class NormOnly(_SubsetStrategy):
    """Only the normalization layers' scales and shifts train (plus the head)."""

    what = "normalization layers with parameters"

    def _selected(self, model: nn.Module) -> set[str]:
        return norm_param_names(model)
