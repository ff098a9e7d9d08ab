"""fastai's LR range test (Smith 2015; fastai ``lr_find``): sweep the LR exponentially over a few
hundred steps, record a smoothed loss, stop when it diverges, and suggest an LR from the curve.

The test trains the real model, so everything it could change is saved first and put back after,
bitwise: weights and buffers (BatchNorm statistics), ``requires_grad``, gradients, module train/eval
modes, the optimizer's state and param-group settings, and the Python, NumPy and torch RNG states. It
runs under the strategy's epoch-0 plan (frozen groups stay frozen, BN in frozen groups stays in eval
mode) and writes LRs with the library's one LR writer, so discriminative ratios hold: the LR it
suggests is the ``lr`` to pass to ``compile()``.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from finetunekit.data import make_loader
from finetunekit.errors import ConfigError, MissingDependencyError
from finetunekit.schedules import constant
from finetunekit.strategies.apply import apply_plan, set_frozen_norms_to_eval, write_lrs
from finetunekit.training import loop
from finetunekit.training.context import LoopState, StepConfig
from finetunekit.training.step import Stepper

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SUGGESTIONS = ("valley", "steep", "minimum")


@dataclass
class LRFinderResult:
    """The LR/loss curve and a suggested LR. Reads like a dict too: ``result["suggested_lr"]``."""

    lrs: list[float]
    losses: list[float]  # smoothed (what fastai plots and suggests from)
    raw_losses: list[float]
    suggested_lr: float | None
    suggestion: str
    diverged: bool
    extras: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.as_dict()[key]

    def as_dict(self) -> dict[str, Any]:
        return {
            "lrs": self.lrs, "losses": self.losses, "raw_losses": self.raw_losses,
            "suggested_lr": self.suggested_lr, "suggestion": self.suggestion, "diverged": self.diverged,
        }  # fmt: skip

    def plot(self, path: str | None = None, skip_end: int = 5) -> Figure:
        """Loss against LR (log scale) with the suggestion marked; saved to ``path`` when given. Returns
        a matplotlib Figure (shown inline in notebooks). The last ``skip_end`` points are left out, as in
        fastai, because the diverging tail would squash the rest of the curve."""
        try:
            from matplotlib.figure import Figure
        except ImportError as e:
            raise MissingDependencyError(
                "LRFinderResult.plot() needs matplotlib, which is not installed; pip install matplotlib, "
                "or plot result.lrs against result.losses yourself"
            ) from e
        end = len(self.lrs) - skip_end if len(self.lrs) > 2 * skip_end else len(self.lrs)
        fig = Figure(figsize=(6, 4))
        ax = fig.add_subplot()
        ax.plot(self.lrs[:end], self.losses[:end])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (base LR; groups keep their scales)")
        ax.set_ylabel("smoothed training loss")
        if self.suggested_lr is not None:
            ax.axvline(self.suggested_lr, color="red", linestyle="--",
                       label=f"{self.suggestion}: {self.suggested_lr:.2e}")  # fmt: skip
            ax.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path)
        return fig

    def __repr__(self) -> str:
        lr = "none" if self.suggested_lr is None else f"{self.suggested_lr:.2e}"
        return (
            f"LRFinderResult(suggested_lr={lr} ({self.suggestion}), steps={len(self.lrs)}, "
            f"diverged={self.diverged})"
        )


# -------------------------------------------------------------------------------------- suggestions
def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's default: the longest descending stretch of the curve (longest decreasing subsequence),
    and a point two thirds of the way down it, where the loss still falls fast but is stable."""
    n = len(losses)
    lds = [1] * n
    max_start = max_end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
        if lds[max_end] < lds[i]:
            max_end, max_start = i, i - lds[i]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def steep(lrs: list[float], losses: list[float]) -> int:
    """The steepest descent of the loss against log LR (fastai's ``steep``)."""
    slopes = [
        (losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(len(lrs) - 1)
    ]
    return int(np.argmin(slopes))


def minimum(lrs: list[float], losses: list[float]) -> int:
    """The LR of the lowest loss; the suggestion is a tenth of it (fastai's ``minimum``)."""
    return int(np.argmin(losses))


def suggest(lrs: list[float], losses: list[float], method: str) -> float | None:
    """Skip the first tenth (fastai does: the smoothed loss is still warming up) and non-finite points."""
    start = len(lrs) // 10
    pts = [(lr, loss) for lr, loss in zip(lrs[start:], losses[start:], strict=True) if math.isfinite(loss)]
    if len(pts) < 5:
        return None
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    index = {"valley": valley, "steep": steep, "minimum": minimum}[method](xs, ys)
    return xs[index] / 10 if method == "minimum" else xs[index]


# --------------------------------------------------------------------------------- save and restore
@dataclass
class _Snapshot:
    model_state: dict[str, torch.Tensor]
    requires_grad: list[bool]
    grads: list[torch.Tensor | None]
    modes: list[bool]
    opt_state: dict[Any, dict[str, Any]]
    opt_groups: list[dict[str, Any]]
    rng: tuple[Any, ...]


def _clone(v: Any) -> Any:
    return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> _Snapshot:
    params = list(model.parameters())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return _Snapshot(
        model_state={k: _clone(v) for k, v in model.state_dict().items()},
        requires_grad=[p.requires_grad for p in params],
        grads=[None if p.grad is None else _clone(p.grad) for p in params],
        modes=[m.training for m in model.modules()],
        opt_state={p: {k: _clone(v) for k, v in s.items()} for p, s in optimizer.state.items()},
        opt_groups=[{k: _clone(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        rng=(random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda),
    )


def restore(model: nn.Module, optimizer: torch.optim.Optimizer, snap: _Snapshot) -> None:
    """Copy everything back in place, so the optimizer still holds the model's own Parameter objects."""
    model.load_state_dict(snap.model_state, strict=True)
    for p, rg, g in zip(model.parameters(), snap.requires_grad, snap.grads, strict=True):
        p.requires_grad_(rg)
        p.grad = g
    for m, mode in zip(model.modules(), snap.modes, strict=True):
        m.training = mode
    optimizer.state.clear()
    optimizer.state.update(snap.opt_state)
    for group, saved in zip(optimizer.param_groups, snap.opt_groups, strict=True):
        for k in [k for k in group if k != "params" and k not in saved]:
            del group[k]
        group.update(saved)
    random.setstate(snap.rng[0])
    np.random.set_state(snap.rng[1])
    torch.set_rng_state(snap.rng[2])
    if snap.rng[3] is not None:
        torch.cuda.set_rng_state_all(snap.rng[3])


# ------------------------------------------------------------------------------------------ the test
def _check_args(
    start_lr: Any, end_lr: Any, num_steps: Any, smooth: Any, diverge: Any, suggestion: Any
) -> None:
    numbers = isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float))
    if not numbers or not 0 < start_lr < end_lr:
        raise ConfigError(
            f"start_lr={start_lr!r}, end_lr={end_lr!r} are invalid; expected 0 < start_lr < end_lr, "
            f"e.g. start_lr=1e-7, end_lr=10"
        )
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 5:
        raise ConfigError(f"num_steps={num_steps!r} is invalid; expected an integer >= 5, e.g. 100")
    if not isinstance(smooth, (int, float)) or not 0 <= smooth < 1:
        raise ConfigError(f"smooth={smooth!r} is invalid; expected a float in [0, 1), e.g. 0.98")
    if isinstance(diverge, bool) or not isinstance(diverge, (int, float)) or not diverge > 1:
        raise ConfigError(f"diverge={diverge!r} is invalid; expected a float > 1, e.g. 4 (fastai's)")
    if suggestion not in SUGGESTIONS:
        raise ConfigError(f"suggestion={suggestion!r} is unknown; expected one of {list(SUGGESTIONS)}")


def find_lr(
    ft: Any,
    x: Any,
    y: Any = None,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    batch_size: int = 32,
    smooth: float = 0.98,
    diverge: float = 4.0,
    suggestion: str = "valley",
    augment: bool = False,
) -> LRFinderResult:
    """Run the LR range test on ``ft`` (compiling it with defaults if needed) and restore it after.

    ``smooth`` is the exponential moving average factor of the loss (bias-corrected, as fastai);
    the sweep stops early once the smoothed loss exceeds ``diverge`` x its best value or is not finite.
    """
    _check_args(start_lr, end_lr, num_steps, smooth, diverge, suggestion)
    if ft._compiled is None:
        ft.compile()
    assert ft.optimizer is not None
    data = ft._prepare(x, y, augment=augment, what="x")
    lrs = [start_lr * (end_lr / start_lr) ** (i / (num_steps - 1)) for i in range(num_steps)]
    smoother = _Smoother(smooth, diverge)
    snap = snapshot(ft.model, ft.optimizer)  # before the loader: it may draw its seed from torch's RNG
    try:
        loader = make_loader(data, batch_size=batch_size, shuffle=True, seed=ft.seed)
        _sweep(ft, loader, lrs, smoother)
    finally:
        restore(ft.model, ft.optimizer, snap)
    done = len(smoother.smoothed)
    return LRFinderResult(
        lrs=lrs[:done], losses=smoother.smoothed, raw_losses=smoother.raw,
        suggested_lr=suggest(lrs[:done], smoother.smoothed, suggestion), suggestion=suggestion,
        diverged=smoother.diverged,
    )  # fmt: skip


class _Smoother:
    """Bias-corrected EMA of the loss (fastai's ``smooth_loss``) and fastai's stop rule: the smoothed
    loss is not finite, or above ``diverge`` x the best smoothed loss so far."""

    def __init__(self, beta: float, diverge: float) -> None:
        self.beta, self.diverge = beta, diverge
        self.avg, self.best = 0.0, math.inf
        self.raw: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False

    def update(self, loss: float) -> bool:
        """Record one raw loss; True when the sweep must stop."""
        self.raw.append(loss)
        self.avg = self.beta * self.avg + (1 - self.beta) * loss
        value = self.avg / (1 - self.beta ** len(self.raw))
        self.smoothed.append(value)
        if not math.isfinite(value) or (len(self.raw) > 1 and value > self.diverge * self.best):
            self.diverged = True
            return True
        self.best = min(self.best, value)
        return False


def _batches(loader: Any) -> Iterator[Any]:
    """The loader again and again (reshuffled each pass), for sweeps longer than one epoch."""
    while True:
        yielded = False
        for batch in loader:
            yielded = True
            yield batch
        if not yielded:
            raise ConfigError("find_lr got no batches: the data is empty")


def _sweep(ft: Any, loader: Any, lrs: list[float], smoother: _Smoother) -> None:
    """One optimizer step per LR under the strategy's epoch-0 plan (frozen groups stay frozen), through
    the fit's compute path (precision, channels_last, compiled forward) but never the EMA: the weights
    that evaluate, predict and save use are not touched."""
    assert ft.optimizer is not None and ft._compiled is not None
    plan = ft.plan(0)
    apply_plan(plan, ft._params_by_group, ft.optimizer)
    compute = replace(ft._compiled.compute, accumulate_steps=1)  # one step per LR
    cfg = StepConfig(
        optimizer=ft.optimizer, loss_fn=ft._compiled.loss_fn, schedule=constant(), metrics=[],
        device=ft.device, steps_per_epoch=len(lrs), total_steps=len(lrs), train_bn=ft.strategy.train_bn,
        stepper=Stepper(compute, ft.model, ft.device, ema=None, compute=ft._compute_path()),
        norms_by_group=ft._norms_by_group,
    )  # fmt: skip
    # A diverging loss ends the sweep (the smoother sees it), never an error.
    state = LoopState(model=ft.model, base_lr=lrs[0], nonfinite="stop")
    ft.model.train()
    set_frozen_norms_to_eval(plan, ft._norms_by_group, ft.strategy.train_bn)
    batches = _batches(loader)
    for index, lr in enumerate(lrs):
        write_lrs(ft.optimizer, lr, 1.0, plan)
        state.step = index
        xb, yb = loop.to_device(next(batches), ft.device)
        loss, _ = loop.train_step(cfg, state, xb, yb, index)
        if smoother.update(float(loss)):
            break
