"""The pretrained (starting-point) backbone state, kept so fine-tuning can be measured and undone.

``FineTuner`` takes one snapshot at creation: every backbone tensor of the state dict (parameters and
buffers such as BatchNorm statistics), *not* the new head, cloned to CPU. That costs one extra copy of
the backbone in host memory (e.g. 13 MB for EfficientNet-Lite0, 350 MB for a ViT-B) and no device
memory. L2-SP, WiSE-FT interpolation, the RetentionMonitor and ``learning_curve``'s fresh copies all read
this one snapshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

State = dict[str, torch.Tensor]


def head_keys(model: nn.Module, head_path: str) -> set[str]:
    prefix = head_path + "."
    return {k for k in model.state_dict() if k.startswith(prefix)}


def backbone_state(model: nn.Module, head_path: str, device: str | torch.device = "cpu") -> State:
    """Every state-dict tensor outside the head, cloned (detached) to ``device``."""
    skip = head_keys(model, head_path)
    return {k: v.detach().to(device, copy=True) for k, v in model.state_dict().items() if k not in skip}


def load_backbone_state(model: nn.Module, state: State) -> None:
    """Copy ``state`` into the model in place (the head is untouched; optimizer references stay valid)."""
    current = model.state_dict()
    with torch.no_grad():
        for k, v in state.items():
            current[k].copy_(v)


def mix_states(pretrained: State, finetuned: State, alpha: float) -> State:
    """WiSE-FT: ``(1 - alpha) * pretrained + alpha * finetuned`` for float tensors; integer buffers (BN's
    ``num_batches_tracked``) come from whichever end ``alpha`` is nearer to. alpha 0 and 1 are exact."""
    out: State = {}
    for k, w0 in pretrained.items():
        w1 = finetuned[k]
        if alpha == 0.0:
            out[k] = w0
        elif alpha == 1.0 or not w0.is_floating_point():
            out[k] = w1 if alpha >= 0.5 else w0
        else:
            out[k] = torch.lerp(w0.to(w1.dtype), w1, float(alpha))
    return out


@contextmanager
def pretrained_weights(tuner: Any) -> Iterator[None]:
    """Temporarily put the pretrained backbone back into ``tuner.model`` (the head stays)."""
    current = backbone_state(tuner.model, tuner._backbone.head_path)
    load_backbone_state(tuner.model, tuner._pretrained_state)
    try:
        yield
    finally:
        load_backbone_state(tuner.model, current)


def relative_change(tuner: Any) -> tuple[float, dict[str, float]]:
    """``||w - w0|| / ||w0||`` over all backbone parameters and per backbone layer group (the head has
    no pretrained value, so it is left out)."""
    params = dict(tuner.model.named_parameters())
    per_group: dict[str, float] = {}
    total_diff, total_ref = 0.0, 0.0
    for group in tuner._backbone.groups[:-1]:
        diff, ref = 0.0, 0.0
        for name in group.param_names:
            w0 = tuner._pretrained_state[name].double()
            diff += float((params[name].detach().to("cpu", torch.float64) - w0).pow(2).sum())
            ref += float(w0.pow(2).sum())
        per_group[group.name] = (diff**0.5) / max(ref**0.5, 1e-12)
        total_diff, total_ref = total_diff + diff, total_ref + ref
    return (total_diff**0.5) / max(total_ref**0.5, 1e-12), per_group
