"""The text of ``ft.summary()``: the whole plan, per layer group and epoch, before training starts.

Consecutive epochs with the same plan share one column (``ep2-29``), so a 30-epoch plan stays as
narrow as the number of times it changes. A last column ``epN+`` means "from here on" when the number
of epochs is not known yet (no ``fit`` and no ``epochs=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from finetunekit.strategies import Plan, Strategy


def epoch_ranges(plans: list[Plan], open_ended: bool) -> list[tuple[str, Plan]]:
    """Collapse identical consecutive plans: ``[(label, plan), ...]`` with labels like ep0, ep1-3, ep4+."""
    out: list[tuple[str, Plan]] = []
    start = 0
    for e in range(1, len(plans) + 1):
        if e < len(plans) and plans[e] == plans[start]:
            continue
        last = e - 1
        if open_ended and e == len(plans):
            label = f"ep{start}+"
        else:
            label = f"ep{start}" if last == start else f"ep{start}-{last}"
        out.append((label, plans[start]))
        start = e
    return out


def _cell(scale: float | None, base_lr: float | None, has_bn: bool, train_bn: bool) -> str:
    if scale is None:
        return "frozen+bn-train" if has_bn and train_bn else "frozen"
    if base_lr is None:
        return f"x{scale:.3g}"
    return f"{base_lr * scale:.2e}"


def _header(
    spec: str,
    strategy: Strategy,
    base_lr: float | None,
    n_epochs: int,
    open_ended: bool,
    restarts: Sequence[int],
) -> list[str]:
    span = "every epoch (the last column holds from then on)" if open_ended else f"{n_epochs} epochs"
    lr = (
        f"cells: peak LR = base_lr {base_lr:g} x group scale (the schedule scales it each step), or frozen"
        if base_lr
        else "cells: LR scale of the base LR (compile() to see LRs), or frozen"
    )
    bn = (
        "BatchNorm: every group's BN trains (train_bn=True); frozen weights stay fixed"
        if strategy.train_bn
        else "BatchNorm: frozen groups run BN in eval mode (statistics kept); training groups update it"
    )
    lines = [f"FineTuner {spec}  strategy={strategy!r}", f"plan for {span}; {lr}", bn]
    if restarts:
        lines.append(f"LR schedule restarts its cycle at epoch(s) {', '.join(map(str, restarts))}")
    return lines


def format_summary(
    spec: str,
    groups: Sequence[Any],
    plans: list[Plan],
    base_lr: float | None,
    strategy: Strategy,
    norms_by_group: list[list[nn.Module]],
    *,
    open_ended: bool = False,
    restarts: Sequence[int] = (),
    trains: Sequence[int] | None = None,
) -> str:
    """One row per layer group (name, params, BN layers) and one column per run of identical epochs;
    the last row counts the trainable parameters of each column. ``trains``: per group, the parameters
    that train while it is open; when a strategy trains only some (LoRA's adapters, BitFit's biases and
    norms) they get their own column."""
    columns = epoch_ranges(plans, open_ended)
    sizes = [g.num_params for g in groups]
    subset = trains is not None and list(trains) != sizes
    counts = list(trains) if trains is not None and subset else sizes
    header = ["group", "params", *(["trains"] if subset else []), "BN", *(label for label, _ in columns)]
    rows = []
    for i, g in enumerate(groups):
        has_bn = bool(norms_by_group[i])
        cells = [_cell(plan[i], base_lr, has_bn, strategy.train_bn) for _, plan in columns]
        own = [f"{counts[i]:,}"] if subset else []
        rows.append([g.name, f"{g.num_params:,}", *own, str(len(norms_by_group[i])), *cells])
    total = sum(sizes)
    trainable = [
        f"{sum(c for c, s in zip(counts, plan, strict=True) if s is not None):,}" for _, plan in columns
    ]
    rows.append(["trainable", "", *([""] if subset else []), "", *trainable])
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    restarts = [r for r in restarts if 0 < r < len(plans) or open_ended]
    out = _header(spec, strategy, base_lr, len(plans), open_ended, restarts)
    out[0] += f"  ({total:,} params)"
    out += [line.format(*header).rstrip(), *(line.format(*r).rstrip() for r in rows)]
    return "\n".join(out)
