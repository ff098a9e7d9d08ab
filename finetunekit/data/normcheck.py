"""Warn when float images were clearly normalized differently from what the backbone expects.

Float N×C×H×W images are taken as already preprocessed; a mismatch there (``ToTensor()`` output in
[0, 1] without ``Normalize``, or 0.5/0.5 normalization for a model trained with ImageNet statistics)
does not crash anything, it silently costs accuracy. We test value *ranges*, not moments: a correctly
normalized image lies in ``[(0 - mean) / std, (1 - mean) / std]`` per channel whatever its content,
whereas channel means depend on the data set (dark digits normalized with ImageNet statistics have
means near -1.8 and are still right), so moment rules would warn on correct data.
"""

from __future__ import annotations

import warnings

import torch

from finetunekit.backbones.base import DataConfig
from finetunekit.data.transforms import channel_stats

SAMPLE = 256  # images looked at: enough for ranges, cheap for any data set size
_MARGIN = 0.1  # fraction of the valid range tolerated outside it (noise augmentation, rounding)
_WARNED: set[tuple[str, tuple[float, ...], tuple[float, ...]]] = set()


def _fmt(t: torch.Tensor | tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{float(v):.3g}" for v in t) + ")"


def diagnose(low: torch.Tensor, high: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> str | None:
    """Which mismatch the per-channel data range [low, high] shows against the valid [lo, hi]."""
    if float(low.min()) >= 0 and float(high.max()) <= 1 and bool((lo < -0.25).any()):
        return "unit"
    in_unit_ball = float(low.min()) >= -1.001 and float(high.max()) <= 1.001 and float(low.min()) < -0.5
    if in_unit_ball and bool(((lo + 1).abs() > 0.25).any() or ((hi - 1).abs() > 0.25).any()):
        return "half"
    tol = _MARGIN * (hi - lo)
    if bool((low < lo - tol).any() or (high > hi + tol).any()):
        return "range"
    return None


_EXPLAIN = {
    "unit": "all values lie in [0, 1]: they look scaled to [0, 1] but not normalized (ToTensor() "
    "without Normalize)",
    "half": "all values lie in [-1, 1]: they look normalized with mean=0.5, std=0.5",
    "range": "values fall outside the range that images normalized this way can have",
}


def warn_if_misnormalized(images: torch.Tensor, data_config: DataConfig, in_chans: int, what: str) -> None:
    """Warn once per kind of mismatch and normalization if ``images`` contradict ``data_config``."""
    step = max(1, len(images) // SAMPLE)
    sample = images[::step][:SAMPLE].transpose(0, 1).reshape(images.shape[1], -1).float()
    mean = channel_stats(tuple(data_config.mean), in_chans).flatten()  # the pipeline's own mapping
    std = channel_stats(tuple(data_config.std), in_chans).flatten()
    lo, hi = -mean / std, (1 - mean) / std
    low, high = sample.min(dim=1).values, sample.max(dim=1).values
    kind = diagnose(low, high, lo, hi)
    key = (kind or "", tuple(data_config.mean), tuple(data_config.std))
    if kind is None or key in _WARNED:
        return
    _WARNED.add(key)
    warnings.warn(
        f"{what}: float images are used as given, but {_EXPLAIN[kind]}. Per channel the data have "
        f"min {_fmt(low)}, max {_fmt(high)}, mean {_fmt(sample.mean(1))}, std {_fmt(sample.std(1))}; "
        f"this backbone expects images in [0, 1] normalized with mean={_fmt(mean)}, std={_fmt(std)}, "
        f"which gives values in min {_fmt(lo)}, max {_fmt(hi)}. Fix: x = (x01 - mean) / std on images "
        "x01 in [0, 1] with these values (see ft.data_config), or pass uint8 images and let "
        "finetunekit preprocess them.",
        UserWarning,
        stacklevel=5,
    )
