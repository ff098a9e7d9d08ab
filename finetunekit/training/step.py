"""How one optimizer step is computed: accumulation, clipping, the fp16 GradScaler and the EMA update.

``fit`` builds one :class:`Stepper` per fit over the tuner's :class:`~finetunekit.training.compute.Compute`
(precision, memory format, torch.compile), and ``loop.train_step`` calls it, so the loop itself has no
branches for these options. Nothing here syncs the host with the device per step, except the fp16
GradScaler's scale read after its update (its non-fused step syncs already).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from finetunekit.training.compute import Compute, ComputeConfig, check_compute

__all__ = ["Compute", "ComputeConfig", "Stepper", "check_compute", "make_ema"]


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> Any:
    """An exponential moving average of ``model``'s weights, updated after each optimizer step
    (:class:`finetunekit.training.ema.WeightEMA`; imported here lazily because it builds on timm)."""
    from finetunekit.training.ema import WeightEMA

    return WeightEMA(model, decay, warmup=warmup)


class Stepper:
    """Turns losses into optimizer steps (accumulated, clipped, scaled) and updates the EMA; forward
    passes go through ``compute`` (the tuner's, so training and evaluation share it)."""

    def __init__(
        self,
        config: ComputeConfig,
        model: nn.Module,
        device: torch.device,
        ema: Any = None,
        compute: Compute | None = None,
    ) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.ema = ema
        self.compute = compute if compute is not None else Compute(config, model, device)
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "16" else None
        self.skipped_steps = 0  # optimizer steps the fp16 GradScaler skipped (inf/NaN gradients)
        self.last_grad_norm: torch.Tensor | None = None
        self.pending = False  # True while an accumulation window has gradients but no step yet
        self._last_scale = self.scaler.get_scale() if self.scaler is not None else None

    def autocast(self) -> AbstractContextManager[Any]:
        return self.compute.autocast()

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return self.compute.prepare(x)

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.compute.forward(module, x)

    def backward_and_step(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        index: int,
        steps_per_epoch: int,
        guarded_step: Callable[[], bool] | None = None,
    ) -> bool | None:
        """Backward for micro-batch ``index`` of the epoch; an optimizer step when its accumulation
        window is complete (or the epoch ends). Windows are ``[0, k), [k, 2k), ...`` of the epoch's batch
        index, so the position comes from the loop's own count and a resumed run steps where the
        uninterrupted one did. The loss is divided by the window's size: grads are the window's mean.

        ``guarded_step`` (the non-finite loss guard, finetunekit.training.nonfinite) replaces
        ``optimizer.step()`` in fp32/bf16; with fp16 the GradScaler skips non-finite steps itself.
        Returns None mid-window, else whether the step was applied."""
        k = self.config.accumulate_steps
        start = index - index % k
        window = min(k, steps_per_epoch - start)
        if index == start:
            optimizer.zero_grad(set_to_none=True)
        scaled = loss / window if window > 1 else loss
        (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if index + 1 - start < window:
            self.pending = True
            return None
        self.pending = False
        self._clip(optimizer)
        applied = self._optimizer_step(optimizer, guarded_step)
        if self.ema is not None and applied:
            self.ema.update()
        return applied

    def _clip(self, optimizer: torch.optim.Optimizer) -> None:
        cfg = self.config
        if cfg.clip_grad_norm is None and cfg.clip_grad_value is None:
            return
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if cfg.clip_grad_value is not None:
            nn.utils.clip_grad_value_(params, cfg.clip_grad_value)
        if cfg.clip_grad_norm is not None:
            self.last_grad_norm = nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)

    def _optimizer_step(
        self, optimizer: torch.optim.Optimizer, guarded_step: Callable[[], bool] | None
    ) -> bool:
        if self.scaler is None:
            if guarded_step is not None:
                return guarded_step()
            optimizer.step()
            return True
        self.scaler.step(optimizer)
        self.scaler.update()
        scale = self.scaler.get_scale()  # the scale drops exactly on a skipped step
        if self._last_scale is not None and scale < self._last_scale:
            self.skipped_steps += 1
        self._last_scale = scale
        return True

    # -- resumable state (registered by the fit, see finetunekit.training.parts) ----------------------
    def scaler_state(self) -> dict[str, Any]:
        """The GradScaler's public state and the skip count."""
        scaler = self.scaler.state_dict() if self.scaler is not None else {}
        return {"scaler": scaler, "skipped": self.skipped_steps, "last_scale": self._last_scale}

    def load_scaler_state(self, state: Any) -> None:
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(dict(state["scaler"]))
        self.skipped_steps = int(state["skipped"])
        self._last_scale = state["last_scale"]

    def accumulation_state(self) -> dict[str, Any]:
        """The gradients of an unfinished accumulation window, by parameter name (empty between windows)."""
        if not self.pending:
            return {"pending": False, "grads": {}}
        grads = {n: p.grad for n, p in self.model.named_parameters() if p.grad is not None}
        return {"pending": True, "grads": grads}

    def load_accumulation_state(self, state: Any) -> None:
        self.pending = bool(state["pending"])
        grads = state["grads"]
        for name, p in self.model.named_parameters():
            p.grad = grads[name].to(p.device, p.dtype).clone() if name in grads else None
