"""The non-finite loss guard: a NaN or infinite loss never reaches ``optimizer.step()``.

``compile(on_nonfinite=...)`` chooses what happens when it does occur:

- ``"raise"`` (default): :class:`NonFiniteLossError` with the epoch, step, learning rates and hints.
- ``"skip"``: the step is not applied (weights and optimizer state stay as they were) and training
  goes on; more than ``MAX_CONSECUTIVE_SKIPS`` skipped steps in a row raise, since the run is lost.
- ``"stop"``: like Keras' TerminateOnNaN, training stops gracefully (``on_epoch_end`` and
  ``on_train_end`` run) with the weights of the last good step.

How the check costs no host sync on GPU: on CPU (and with optimizers that cannot skip on the device)
``bool(isfinite(loss))`` is read directly; on CPU that is free. On CUDA with an optimizer that supports
torch's AMP skip flag (``fused=True`` Adam/AdamW/SGD), the flag is computed on the device and handed to
``optimizer.step`` as ``found_inf``, which makes the fused kernel leave parameters, moments and the step
count untouched; once a step was non-finite, the flag stays set (except with ``"skip"``), so no later
step applies either. The flag is read on the host only when the loop syncs its logs anyway
(every ``LOG_EVERY`` steps and at the end of the epoch); the error then names the first bad step. On
that path a skipped step's loss still enters the epoch's running mean (the host does not know yet).
"""

from __future__ import annotations

from typing import Any

import torch

from finetunekit.errors import ConfigError, NonFiniteLossError
from finetunekit.training.context import LoopState

POLICIES = ("raise", "skip", "stop")
MAX_CONSECUTIVE_SKIPS = 10


def check_policy(value: Any) -> str:
    if value not in POLICIES:
        raise ConfigError(
            f"on_nonfinite={value!r} is invalid; expected one of {list(POLICIES)}: 'raise' (stop with an "
            "error), 'skip' (drop the step, bounded) or 'stop' (end training gracefully)"
        )
    return str(value)


def _device_skippable(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> bool:
    return loss.device.type == "cuda" and bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def snapshot_buffers(state: LoopState) -> list[torch.Tensor]:
    """BatchNorm statistics before the forward pass: a non-finite batch must not leave them NaN either.
    Buffers are small (two vectors per norm layer); they are copied into storage allocated once per fit."""
    buffers = [b.detach() for b in state.model.buffers()]
    backup = state.buffer_backup
    if backup is None or len(backup) != len(buffers):
        backup = state.buffer_backup = [torch.empty_like(b) for b in buffers]
    for saved, buffer in zip(backup, buffers, strict=True):  # torch's fused _foreach_copy_ is private
        saved.copy_(buffer)
    return backup


def guarded_step(
    state: LoopState, optimizer: torch.optim.Optimizer, loss: torch.Tensor, buffers: list[torch.Tensor]
) -> bool:
    """``optimizer.step()`` unless ``loss`` is non-finite; False when the host knows it skipped.
    ``buffers`` (from :func:`snapshot_buffers`) are put back when the step is skipped."""
    if _device_skippable(optimizer, loss):
        bad = _device_step(state, optimizer, loss)
        for b, saved in zip(state.model.buffers(), buffers, strict=True):
            b.copy_(torch.where(bad, saved, b))
        return True
    if bool(torch.isfinite(loss)):
        state.skipped = 0
        optimizer.step()
        return True
    with torch.no_grad():
        for b, saved in zip(state.model.buffers(), buffers, strict=True):
            b.copy_(saved)
    _on_nonfinite(state, optimizer, float(loss), state.step)
    return False


def _device_step(loop: LoopState, optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> torch.Tensor:
    bad = ~torch.isfinite(loss.detach())
    state = loop.nonfinite_state
    if state is None:
        zero = torch.zeros((), dtype=torch.int64, device=loss.device)
        state = loop.nonfinite_state = {
            "poisoned": bad & False,
            "run": zero,
            "longest": zero,
            "first": zero - 1,
        }
    step = torch.full((), loop.step, dtype=torch.int64, device=loss.device)
    state["first"] = torch.where(bad & (state["first"] < 0), step, state["first"])
    state["run"] = torch.where(bad, state["run"] + 1, torch.zeros_like(state["run"]))
    state["longest"] = torch.maximum(state["longest"], state["run"])
    if loop.nonfinite != "skip":
        bad = bad | state["poisoned"]
        state["poisoned"] = bad
    opt: Any = optimizer  # the two attributes torch's fused optimizers read in step()
    opt.grad_scale, opt.found_inf = None, bad.float()  # what torch.amp.GradScaler hands fused steps
    try:
        opt.step()
    finally:
        del opt.grad_scale, opt.found_inf
    return bad


def check_deferred(loop: LoopState, optimizer: torch.optim.Optimizer) -> None:
    """At a sync point: act on a non-finite loss the device-side guard has seen since the last one."""
    state = loop.nonfinite_state
    if state is None:
        return
    first, run, longest, poisoned = (
        int(v) for v in (state["first"], state["run"], state["longest"], state["poisoned"])
    )
    if loop.nonfinite == "skip":
        loop.skipped = run
        if longest > MAX_CONSECUTIVE_SKIPS:
            what = f"{longest} consecutive steps had a non-finite loss"
            _raise(loop, optimizer, float("nan"), first, what)
    elif poisoned:
        _on_nonfinite(loop, optimizer, float("nan"), first)


def _on_nonfinite(loop: LoopState, optimizer: torch.optim.Optimizer, value: float, step: int) -> None:
    if loop.nonfinite == "skip":
        loop.skipped += 1
        if loop.skipped > MAX_CONSECUTIVE_SKIPS:
            _raise(loop, optimizer, value, step, f"{loop.skipped} consecutive steps had a non-finite loss")
        return
    if loop.nonfinite == "stop":
        loop.stop_requested = True
        return
    _raise(loop, optimizer, value, step, "the loss was non-finite")


def _raise(loop: LoopState, optimizer: torch.optim.Optimizer, value: float, step: int, what: str) -> None:
    lrs = sorted({float(g["lr"]) for g in optimizer.param_groups if g["lr"] > 0})
    lr_text = ", ".join(f"{lr:.3g}" for lr in lrs) or "0"
    raise NonFiniteLossError(
        f"{what} (loss={value}) at epoch {loop.epoch}, step {step} with learning rates {lr_text}; the "
        "weights are those of the last finite step (no update was applied). Expected a finite loss. "
        "Fixes: lower the learning rate (compile(lr=...)), check the inputs for NaN/inf values or wrong "
        "normalization, check a custom loss for log(0) or division by zero, or pass "
        "compile(on_nonfinite='skip') to drop rare bad batches."
    )
