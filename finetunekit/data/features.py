"""Pre-logits features of a FineTuner's model: the input of its head module, captured by a forward
pre-hook at ``backbone.head_path``.

A hook works for every registry and for custom modules alike (timm's ``forward_head(pre_logits=True)``
exists only in timm), and it sees exactly what the classifier sees: pooled, flattened, after any
pre-logits layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.data import make_loader


def head_module(tuner: Any) -> nn.Module:
    module: nn.Module = tuner.model.get_submodule(tuner._backbone.head_path)
    return module


@torch.no_grad()
def model_features(tuner: Any, loader: Any) -> torch.Tensor:
    """Head inputs for every batch of ``loader`` (eval mode, float32 on CPU); the model's mode is restored."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().flatten(1).float().cpu())

    handle = head_module(tuner).register_forward_pre_hook(hook)
    was_training = tuner.model.training
    tuner.model.eval()
    try:
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            tuner.model(x.to(tuner.device))
    finally:
        handle.remove()
        tuner.model.train(was_training)
    return torch.cat(captured) if captured else torch.zeros(0, 0)


def extract_features(tuner: Any, x: Any, y: Any = None, batch_size: int = 64) -> tuple[np.ndarray, Any]:
    """Features of images ``x`` through the tuner's own preprocessing; returns (features, labels)."""
    data = tuner._prepare(x, y, augment=False, what="x", require_labels=y is not None)
    loader = make_loader(data, batch_size=batch_size, shuffle=False, seed=None)
    feats = model_features(tuner, loader)
    return feats.numpy(), data.labels
