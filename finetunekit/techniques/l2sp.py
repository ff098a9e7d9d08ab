"""L2-SP (Li, Grandvalet and Davoine, ICML 2018): weight decay toward the starting point.

Plain weight decay pulls every weight toward zero, which for a pretrained backbone means toward forgetting.
L2-SP pulls the backbone toward its pretrained weights instead and decays only the new head:

    penalty = alpha / 2 * sum_backbone ||w - w0||^2  +  beta / 2 * sum_head ||w||^2

over the parameters that currently train (``requires_grad``), so it composes with any strategy: a frozen
group adds nothing. Backbone sums run over every parameter (weights, biases and norm affines: all of them
were pretrained); the head term covers its weights, not its biases, as ordinary decay does.

How it combines with ``compile(weight_decay=...)``: with a regularizer that sets ``replaces_weight_decay``
(L2SP does), ``compile`` builds the optimizer with decoupled weight decay 0 for every group, so nothing is
decayed twice or pulled toward zero; ``beta`` is the head's decay. The penalty is added to the training
loss for the backward pass only; the logged ``loss`` stays the data loss, comparable to ``val_loss``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from finetunekit.errors import ConfigError
from finetunekit.strategies.lora import delta_terms, is_adapter_param


def _check(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(f"L2SP {name}={value!r} is invalid; expected a float >= 0, e.g. L2SP(0.01, 0.01)")
    return float(value)


class L2SP:
    """``compile(regularizer=L2SP(alpha=0.01, beta=0.01))``; ``alpha`` toward w0, ``beta`` head decay.

    The paper's values are alpha=0.1, beta=0.01 with SGD; with Adam-type optimizers, whose steps do not
    scale with the gradient, smaller alphas (1e-3..1e-2 per sample-mean loss) are already strong.
    The starting point ``w0`` is the FineTuner's pretrained snapshot, copied once to the model's device
    (one extra backbone copy in device memory while training).
    """

    replaces_weight_decay = True

    def __init__(self, alpha: float = 0.01, beta: float = 0.01):
        self.alpha = _check("alpha", alpha)
        self.beta = _check("beta", beta)
        self._backbone: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._head: list[nn.Parameter] = []
        self._deltas: list[tuple[Any, list[nn.Parameter]]] = []

    def bind(self, tuner: Any) -> L2SP:
        """Pair each backbone parameter with its pretrained value on the model's device."""
        params = dict(tuner.model.named_parameters())
        groups = tuner._backbone.groups
        snapshot = tuner._pretrained_state
        self._backbone = [
            (params[n], snapshot[n].to(params[n].device, params[n].dtype))
            for g in groups[:-1]
            for n in g.param_names
            if not is_adapter_param(n)
        ]
        self._deltas = delta_terms(tuner.model)  # LoRA: the merged weight's change, ||dW||^2
        self._head = [params[n] for n in groups[-1].param_names if params[n].ndim >= 2]
        return self

    def __call__(self) -> torch.Tensor:
        """The penalty for the current weights (a scalar tensor with grad to the trainable ones)."""
        terms: list[torch.Tensor] = []
        if self.alpha:
            terms += [(self.alpha / 2) * (p - w0).pow(2).sum() for p, w0 in self._backbone if p.requires_grad]
            terms += [(self.alpha / 2) * d().pow(2).sum() for d, ps in self._deltas if ps[0].requires_grad]
        if self.beta:
            terms += [(self.beta / 2) * p.pow(2).sum() for p in self._head if p.requires_grad]
        if not terms:
            device = self._head[0].device if self._head else None
            return torch.zeros((), device=device)
        return torch.stack(terms).sum()

    def __repr__(self) -> str:
        return f"L2SP(alpha={self.alpha:g}, beta={self.beta:g})"
