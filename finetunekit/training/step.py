"""How one optimizer step is computed: precision, memory format, torch.compile, accumulation, clipping, EMA.

``compile()`` checks these options into a :class:`ComputeConfig`; ``fit`` builds one :class:`Stepper` that
``loop.train_step`` calls, so the loop itself has no branches for them (DESIGN decision 9). Nothing here
syncs the host with the device per step: skipped fp16 steps are counted in a device tensor.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from finetunekit.errors import ConfigError

logger = logging.getLogger("finetunekit")

_PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16": torch.bfloat16, "16": torch.float16}
_ALIASES = {"fp32": "32", "32-true": "32", "bf16-mixed": "bf16", "bfloat16": "bf16", "fp16": "16",
            "16-mixed": "16", "float16": "16"}  # fmt: skip


@dataclass(frozen=True)
class ComputeConfig:
    """compile()'s compute options, checked."""

    precision: str = "32"
    channels_last: bool = False
    compile_model: bool | str = False  # True: torch.compile's default backend; a str names the backend
    accumulate_steps: int = 1
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    ema_decay: float | None = None
    ema_warmup: bool = False  # timm's EMA warm-up: decay 1 - (1 + step) ** -2/3, capped at ema_decay

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return _PRECISIONS[self.precision]


def _check_precision(precision: Any, device: torch.device) -> str:
    key = _ALIASES.get(str(precision).lower(), str(precision).lower())
    if isinstance(precision, bool) or key not in _PRECISIONS:
        raise ConfigError(f"precision={precision!r} is invalid; expected '32', 'bf16' or '16' (mixed fp16)")
    dtype = _PRECISIONS[key]
    if dtype is not None and not _autocast_works(device, dtype):
        raise ConfigError(
            f"precision={precision!r}: autocast to {dtype} is not supported on {device} by this torch "
            f"({torch.__version__}); use precision='32', or 'bf16' on CPU"
        )
    return key


def _autocast_works(device: torch.device, dtype: torch.dtype) -> bool:
    try:
        with torch.autocast(device.type, dtype=dtype):
            out = nn.functional.linear(torch.ones(1, 2, device=device), torch.ones(2, 2, device=device))
        return out.dtype == dtype
    except (RuntimeError, ValueError, AssertionError):
        return False


def _optional_positive(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name}={value!r} is invalid; expected a float > 0 (e.g. 1.0) or None for off")
    return float(value)


def check_compute(
    device: torch.device,
    precision: Any = "32",
    channels_last: Any = False,
    compile_model: Any = False,
    accumulate_steps: Any = 1,
    clip_grad_norm: Any = None,
    clip_grad_value: Any = None,
    ema_decay: Any = None,
    ema_warmup: Any = False,
) -> ComputeConfig:
    """Validate compile()'s compute options before anything trains (DESIGN decision 7)."""
    for name, flag in (("channels_last", channels_last), ("ema_warmup", ema_warmup)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name}={flag!r} is invalid; expected True or False")
    if not isinstance(compile_model, (bool, str)):
        raise ConfigError(
            f"compile_model={compile_model!r} is invalid; expected True/False or a torch.compile backend "
            "name such as 'inductor' or 'eager'"
        )
    if isinstance(accumulate_steps, bool) or not isinstance(accumulate_steps, int) or accumulate_steps < 1:
        raise ConfigError(
            f"accumulate_steps={accumulate_steps!r} is invalid; expected an integer >= 1 (1: none)"
        )
    if ema_warmup and ema_decay is None:
        raise ConfigError("ema_warmup=True needs an EMA; pass ema_decay too, e.g. ema_decay=0.999")
    if ema_decay is not None and (
        isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 < ema_decay < 1
    ):
        raise ConfigError(
            f"ema_decay={ema_decay!r} is invalid; expected a float in (0, 1), e.g. 0.999, or None"
        )
    return ComputeConfig(
        precision=_check_precision(precision, device),
        channels_last=channels_last,
        compile_model=compile_model,
        accumulate_steps=accumulate_steps,
        clip_grad_norm=_optional_positive("clip_grad_norm", clip_grad_norm),
        clip_grad_value=_optional_positive("clip_grad_value", clip_grad_value),
        ema_decay=None if ema_decay is None else float(ema_decay),
        ema_warmup=ema_warmup,
    )


def make_ema(model: nn.Module, decay: float, warmup: bool = False) -> Any:
    """An exponential moving average of ``model``'s weights, updated after each optimizer step
    (:class:`finetunekit.training.ema.WeightEMA`; imported here lazily because it builds on timm)."""
    from finetunekit.training.ema import WeightEMA

    return WeightEMA(model, decay, warmup=warmup)


class Stepper:
    """Runs forward under autocast and turns losses into optimizer steps (accumulated, clipped, scaled).

    ``model`` is the full model: torch.compile and EMA apply to it; other modules (the feature cache's
    head suffix) run eagerly through :meth:`forward`.
    """

    def __init__(
        self,
        config: ComputeConfig,
        model: nn.Module,
        device: torch.device,
        ema: Any = None,
    ) -> None:
        self.config = config
        self.model = model
        self.device = device
        self.ema = ema
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "16" else None
        self.skipped_steps = 0  # optimizer steps the fp16 GradScaler skipped (inf/NaN gradients)
        self.last_grad_norm: torch.Tensor | None = None
        self.pending = False  # True while an accumulation window has gradients but no step yet
        self._last_scale = self.scaler.get_scale() if self.scaler is not None else None
        self._forward: Any = None
        if config.channels_last:
            model.to(memory_format=torch.channels_last)

    def autocast(self) -> AbstractContextManager[Any]:
        dtype = self.config.autocast_dtype
        return nullcontext() if dtype is None else torch.autocast(self.device.type, dtype=dtype)

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if module is not self.model or not self.config.compile_model:
            return module(x)
        if self._forward is None:
            return self._first_compiled_forward(x)
        return self._forward(x)

    def _first_compiled_forward(self, x: torch.Tensor) -> torch.Tensor:
        """torch.compile fails lazily (no compiler, unsupported op): on the first call. Fall back to eager
        with a message rather than stopping the run."""
        backend = self.config.compile_model
        try:
            if isinstance(backend, str):
                compiled = torch.compile(self.model, backend=backend)
            else:
                compiled = torch.compile(self.model)
            out = compiled(x)
        except Exception as e:  # any compiler failure means: run eagerly
            detail = str(e).splitlines()[0][:200] if str(e) else ""
            message = (
                f"compile_model: torch.compile could not compile {type(self.model).__name__} "
                f"({type(e).__name__}: {detail}); training eagerly instead"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            logger.warning(message)
            self._forward = self.model
            return self.model(x)
        self._forward = compiled
        return out

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
