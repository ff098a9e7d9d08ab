"""The EMA of the weights that validation, evaluate, predict and save use when ``compile(ema_decay=...)``.

timm's :class:`~timm.utils.ModelEmaV3` with two changes: an update lerps only the parameters that train
now (a frozen parameter equals its average already, so with a frozen backbone an update costs the head's
size, not the model's) plus the float buffers (BatchNorm statistics); and the number of updates is kept,
so the warm-up (``compile(ema_warmup=True)``: timm's ``1 - (1 + step) ** -2/3``, capped at ``ema_decay``)
and a checkpoint resume both know where the average is.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.utils import ModelEmaV3
from torch import nn


class WeightEMA(ModelEmaV3):
    """``module`` is the averaged copy; :meth:`update_from` is called after each applied optimizer step."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = False) -> None:
        super().__init__(model, decay=decay, use_warmup=warmup)
        self.module.requires_grad_(False)
        self.updates = 0
        self._param_pairs = list(zip(self.module.parameters(), model.parameters(), strict=True))
        pairs = zip(self.module.buffers(), model.buffers(), strict=True)
        self._float_buffers = [(e, b) for e, b in pairs if e.is_floating_point()]

    def current_decay(self) -> float:
        """The decay of the next update: ``ema_decay``, or timm's warm-up value for update ``updates + 1``."""
        return float(self.get_decay(self.updates + 1)) if self.use_warmup else float(self.decay)

    @torch.no_grad()
    def update(self, model: nn.Module | None = None, step: int | None = None) -> None:
        """One EMA step towards the model this EMA was built from (timm's signature; ``model`` and
        ``step`` are accepted for it, but the pairs and the update count are this EMA's own)."""
        weight = 1.0 - self.current_decay()
        self.updates += 1
        trainable = [(e, p) for e, p in self._param_pairs if p.requires_grad]
        for pairs in (trainable, self._float_buffers):
            for averaged, value in pairs:  # per tensor: torch's fused _foreach_lerp_ is private
                averaged.lerp_(value.detach(), weight)

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint keeps: the averaged weights and the update count."""
        return {"weights": self.module.state_dict(), "updates": self.updates}

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["weights"], strict=True)
        self.updates = int(state["updates"])
