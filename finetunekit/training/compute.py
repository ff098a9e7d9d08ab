"""The one compute path: precision (autocast), memory format and torch.compile, for every forward pass.

``compile()`` checks the options into a :class:`ComputeConfig` and builds the tuner's :class:`Compute`;
training steps, validation, ``evaluate``, ``predict`` and ``find_lr`` all run their forward passes through
that one object, so a model is measured the way it is trained.
"""

from __future__ import annotations

import logging
import warnings
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
    """Validate compile()'s compute options before anything trains: a bad value names itself and the fix."""
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


class Compute:
    """Forward passes under ``config``: autocast, channels_last inputs, and (for ``model`` itself) the
    torch.compile'd forward, compiled once on first use. Other modules (the EMA copy, the feature
    cache's head suffix, a DDP wrapper) run eagerly under the same autocast and memory format."""

    def __init__(self, config: ComputeConfig, model: nn.Module, device: torch.device) -> None:
        self.config = config
        self.model = model
        self.device = device
        self._forward: Any = None
        if config.channels_last:
            model.to(memory_format=torch.channels_last)

    def __call__(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``module(x)`` as training computes it: autocast, memory format, compiled when ``model``."""
        with self.autocast():
            return self.forward(module, self.prepare(x))

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
