"""Run a FineTuner fit and record, at every epoch and step, what a strategy must guarantee.

Shared by the tiny-model and real-architecture strategy tests (importable as `strategy_harness`). The
expected LRs are computed independently of the library: named schedules from their formulas via
``finetunekit.schedules`` (tested on their own in test_schedules.py), torch schedulers by running the
real torch scheduler on a separate optimizer, restarted where the strategy restarts the schedule.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import torch

from finetunekit import FineTuner
from finetunekit.callbacks import Callback
from finetunekit.schedules import SCHEDULES


def group_state_keys(ft: FineTuner) -> list[list[str]]:
    """state_dict keys (parameters AND buffers, e.g. BN running stats) of each layer group."""
    keys = list(ft.model.state_dict())
    out = []
    for g in ft.groups:
        modules = {n.rpartition(".")[0] for n in g.param_names}
        out.append([k for k in keys if k in g.param_names or k.rpartition(".")[0] in modules])
    return out


@dataclass
class Record:
    plans: dict[int, list[float | None]] = field(default_factory=dict)
    requires_grad: dict[int, list[bool]] = field(default_factory=dict)  # per group, all params agree
    mixed_requires_grad: list[tuple[int, int]] = field(default_factory=list)
    lrs: list[tuple[int, dict[int, float]]] = field(default_factory=list)  # (epoch, group -> lr)
    group_counts: list[int] = field(default_factory=list)
    frozen_changed: list[tuple[int, str]] = field(default_factory=list)  # (epoch, state key)
    frozen_bn_training: list[tuple[int, int]] = field(default_factory=list)
    frozen_with_grad_or_state: list[tuple[int, int]] = field(default_factory=list)


class Recorder(Callback):
    def __init__(self, ft: FineTuner) -> None:
        super().__init__()
        self.ft = ft
        self.rec = Record()
        self.keys = group_state_keys(ft)
        self.epoch = -1

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        ft, rec = self.ft, self.rec
        self.epoch = epoch
        plan = ft.plan(epoch)
        rec.plans[epoch] = plan
        flags = []
        for i, params in enumerate(ft._params_by_group):
            rg = {p.requires_grad for p in params}
            if len(rg) != 1:
                rec.mixed_requires_grad.append((epoch, i))
            flags.append(all(rg))
            if plan[i] is None and any(p.grad is not None or p in ft.optimizer.state for p in params):
                rec.frozen_with_grad_or_state.append((epoch, i))
        rec.requires_grad[epoch] = flags
        rec.group_counts.append(len(ft.optimizer.param_groups))
        self.before = {k: v.detach().clone() for k, v in ft.model.state_dict().items()}

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        plan = self.rec.plans[self.epoch]
        for i, norms in enumerate(self.ft._norms_by_group):
            if plan[i] is None and any(m.training for m in norms) and not self.ft.strategy.train_bn:
                self.rec.frozen_bn_training.append((self.epoch, i))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        lrs: dict[int, float] = {}
        for pg in self.ft.optimizer.param_groups:
            lrs.setdefault(pg["group_index"], pg["lr"])
            assert lrs[pg["group_index"]] == pg["lr"], "decay / no-decay halves of a group disagree"
        self.rec.lrs.append((self.epoch, lrs))

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        after = self.ft.model.state_dict()
        for i, scale in enumerate(self.rec.plans[epoch]):
            if scale is None:
                for k in self.keys[i]:
                    if not torch.equal(self.before[k], after[k]):
                        self.rec.frozen_changed.append((epoch, k))


def run(ft: FineTuner, x: Any, y: Any, epochs: int, batch_size: int) -> Record:
    recorder = Recorder(ft)
    ft.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, augment=False, shuffle=False,
           callbacks=[recorder])  # fmt: skip
    return recorder.rec


def expected_multipliers(
    schedule: Any, schedule_kwargs: dict[str, Any], steps: int, epochs: int, restarts: list[int]
) -> list[float]:
    """The multiplier the library must use at every step, with the schedule restarting its cycle at
    each restart epoch (progress 0 -> 1 within each cycle)."""
    bounds = [0, *[r for r in sorted(restarts) if 0 < r < epochs], epochs]
    out: list[float] = []
    for start, end in itertools.pairwise(bounds):
        total = (end - start) * steps
        if isinstance(schedule, str):
            f = SCHEDULES[schedule](**schedule_kwargs)
            out += [f(i / total) for i in range(total)]
        else:  # a torch scheduler class: the real thing on its own optimizer
            opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
            sched = schedule(opt, **schedule_kwargs)
            for _ in range(total):
                out.append(opt.param_groups[0]["lr"])
                opt.step()
                sched.step()
    return out


def check_record(rec: Record, ft: FineTuner, epochs: int, multipliers: list[float], base_lr: float) -> None:
    """Every guarantee, with messages that say which epoch/group broke it."""
    assert not rec.mixed_requires_grad, rec.mixed_requires_grad
    for e in range(epochs):
        assert rec.requires_grad[e] == [s is not None for s in rec.plans[e]], (e, rec.requires_grad[e])
    assert len(set(rec.group_counts)) == 1, rec.group_counts
    assert not rec.frozen_changed, rec.frozen_changed[:5]
    assert not rec.frozen_bn_training, rec.frozen_bn_training
    assert not rec.frozen_with_grad_or_state, rec.frozen_with_grad_or_state
    assert len(rec.lrs) == len(multipliers)
    for step, ((epoch, lrs), m) in enumerate(zip(rec.lrs, multipliers, strict=True)):
        plan = rec.plans[epoch]
        for i, scale in enumerate(plan):
            want = base_lr * m * (scale or 0.0)
            assert lrs[i] == want, (step, epoch, i, lrs[i], want)
        top = max(range(len(plan)), key=lambda i: plan[i] or 0.0)
        for i, scale in enumerate(plan):  # the ratios, as a user would check them
            if scale is not None and lrs[top] > 0:
                assert abs(lrs[i] / lrs[top] - scale / plan[top]) <= 1e-12 * scale / plan[top]
