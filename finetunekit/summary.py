"""The text of ``ft.summary()``: the whole plan, per layer group and epoch, before training starts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from finetunekit.strategies import Plan, Strategy


def _cell(scale: float | None, base_lr: float | None) -> str:
    if scale is None:
        return "frozen"
    if base_lr is None:
        return f"x{scale:.3g}"
    return f"{base_lr * scale:.2e}"


def _bn_mode(scale: float | None, norms: list[nn.Module], train_bn: bool) -> str:
    if not norms:
        return "-"
    return "train" if scale is not None or train_bn else "eval"


def format_summary(
    spec: str,
    groups: Sequence[Any],
    plans: list[Plan],
    base_lr: float | None,
    strategy: Strategy,
    norms_by_group: list[list[nn.Module]],
) -> str:
    """One row per layer group; one column per epoch showing its peak LR (or 'frozen') and BN mode."""
    epochs = [f"ep{e}" for e in range(len(plans))]
    header = ["group", "params", "trainable(ep0)", *epochs]
    rows = []
    for i, g in enumerate(groups):
        cells = [
            f"{_cell(p[i], base_lr)}/bn:{_bn_mode(p[i], norms_by_group[i], strategy.train_bn)}" for p in plans
        ]
        rows.append([g.name, f"{g.num_params:,}", "yes" if plans[0][i] is not None else "no", *cells])
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    total = sum(g.num_params for g in groups)
    trainable0 = sum(g.num_params for i, g in enumerate(groups) if plans[0][i] is not None)
    lr_note = (
        "LR = peak LR of each group (base_lr x scale; the schedule multiplies it per step)"
        if base_lr
        else ("LR shown as scale of the base LR (call compile() to see values)")
    )
    out = [
        f"FineTuner {spec}  strategy={strategy!r}",
        f"params: {total:,} total, {trainable0:,} trainable in epoch 0; {lr_note}",
        line.format(*header),
        *(line.format(*r) for r in rows),
    ]
    return "\n".join(out)
