"""Augmentation policies for ``fit(augment=...)``, as torchvision v2 transforms on uint8 C×H×W images.

``augment`` takes:

- ``True`` / ``"light"`` (the default): RandomResizedCrop(scale=(0.35, 1)) and a horizontal flip;
- ``False`` / ``None`` / ``"none"``: no augmentation;
- ``"randaugment"`` (torchvision RandAugment, 2 ops at magnitude 9), ``"trivialaugment"``
  (TrivialAugmentWide), ``"autoaugment"`` (the ImageNet AutoAugment policy), each after the light crop
  and flip;
- a timm ``auto_augment`` string such as ``"rand-m9-mstd0.5"``, ``"rand-m7-n3-mstd0.5-inc1"``,
  ``"augmix-m5-w4-d2"`` or ``"original"`` (timm's implementation, so the strings mean what timm says);
- :class:`Augment` to add random erasing (``Augment("randaugment", erasing=0.25)``) or change the crop;
- a torchvision v2 transform (or any callable on uint8 C×H×W tensors) of your own, used instead of the
  crop and flip.

Whatever is chosen, the backbone's resize and normalization stay: every image is resized to the input
size after the policy and normalized with the weights' mean and std. Every random draw comes from torch's
global RNG inside the transform call (timm's policies draw from Python's ``random`` and numpy; they run
with those seeded from one torch draw), so seeding torch per sample makes augmentation reproducible.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from finetunekit.errors import ConfigError

PRESETS = ("light", "randaugment", "trivialaugment", "autoaugment")
_TIMM = re.compile(r"^(rand|augmix|original|originalr|v0|v0r|3a)(-|$)")
ImageFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Augment:
    """A named policy (see the module docs) plus random erasing and the crop's scale range.
    ``erasing`` is the probability of erasing a random rectangle (timm's ``reprob``), applied to the
    normalized image with value 0 (the dataset mean)."""

    policy: str = "light"
    erasing: float = 0.0
    crop_scale: tuple[float, float] = (0.35, 1.0)
    flip: bool = True

    def __post_init__(self) -> None:
        if self.policy not in PRESETS and not _TIMM.match(self.policy):
            raise ConfigError(_unknown(self.policy))
        if (
            isinstance(self.erasing, bool)
            or not isinstance(self.erasing, (int, float))
            or not 0 <= self.erasing <= 1
        ):
            raise ConfigError(
                f"Augment(erasing={self.erasing!r}) is invalid; expected a probability in [0, 1]."
            )
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(
                f"Augment(crop_scale={self.crop_scale!r}) is invalid; expected 0 < low <= high <= 1."
            )

    @property
    def light(self) -> bool:
        """Only crop and flip: what float (already normalized) images can take."""
        return self.policy == "light" and not self.erasing


def _unknown(value: Any) -> str:
    return (
        f"augment={value!r} is unknown; expected True/False, 'always' (augment frozen-backbone epochs too), "
        f"one of {list(PRESETS)}, a timm auto_augment string such as 'rand-m9-mstd0.5', "
        "finetunekit.data.augment.Augment(...), or a torchvision v2 transform."
    )


@dataclass(frozen=True)
class UserTransform:
    """A user's transform, in place of the crop and flip; resize and normalization follow it."""

    transform: Any
    light: bool = False
    erasing: float = 0.0


Policy = Augment | UserTransform


def resolve_augment(value: Any) -> Policy | None:
    """``fit(augment=...)`` -> a policy, or None for no augmentation; anything else raises."""
    if value is None or value is False or value == "none":
        return None
    if value is True:
        return Augment()
    if isinstance(value, str):
        return Augment(value)
    if isinstance(value, (Augment, UserTransform)):
        return value
    if callable(value) and not isinstance(value, type):
        return UserTransform(value)
    raise ConfigError(_unknown(value))


class TorchSeeded:
    """Runs ``fn`` with Python's and numpy's global RNGs seeded from one draw of torch's, then puts them
    back: timm's PIL policies then follow torch's seeding and leave the user's RNGs alone."""

    def __init__(self, fn: ImageFn) -> None:
        self.fn = fn

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        py_state, np_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed)
        try:
            return self.fn(image)
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _timm_policy(name: str, size: tuple[int, int], mean: tuple[float, ...]) -> ImageFn:
    """timm's transform for an auto_augment string, on PIL images converted from and to uint8 tensors."""
    from timm.data import auto_augment as aa
    from torchvision.transforms.v2 import functional as F

    params = {
        "translate_const": int(min(size) * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in mean),
    }
    if name.startswith("rand") or name == "3a":
        policy = aa.rand_augment_transform(name if name != "3a" else "rand-3a", params)
    elif name.startswith("augmix"):
        policy = aa.augment_and_mix_transform(name, params)
    else:
        policy = aa.auto_augment_transform(name, params)

    def run(image: torch.Tensor) -> torch.Tensor:
        out = policy(F.to_pil_image(image))
        return torch.from_numpy(np.array(out, dtype=np.uint8)).permute(2, 0, 1) if image.shape[0] == 3 else (
            torch.from_numpy(np.array(out, dtype=np.uint8)).reshape(image.shape)
        )  # fmt: skip

    return TorchSeeded(run)


def _policy_op(
    name: str, size: tuple[int, int], mean: tuple[float, ...], interpolation: Any
) -> ImageFn | None:
    from torchvision.transforms import v2

    if name == "randaugment":
        return v2.RandAugment(interpolation=interpolation)
    if name == "trivialaugment":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if name == "autoaugment":
        return v2.AutoAugment(interpolation=interpolation)
    if name == "light":
        return None
    return _timm_policy(name, size, mean)


def build_augmenter(
    policy: Policy, size: tuple[int, int], mean: tuple[float, ...], interpolation: Any
) -> ImageFn:
    """uint8 C×H×W -> augmented uint8 C×H'×W' (the caller resizes to ``size`` and normalizes)."""
    from torchvision.transforms import v2

    if isinstance(policy, UserTransform):
        return TorchSeeded(policy.transform)
    steps: list[Any] = [v2.RandomResizedCrop(list(size), scale=policy.crop_scale, interpolation=interpolation,
                                             antialias=True)]  # fmt: skip
    if policy.flip:
        steps.append(v2.RandomHorizontalFlip())
    op = _policy_op(policy.policy, size, mean, interpolation)
    if op is not None:
        steps.append(op)
    return v2.Compose(steps)


def build_eraser(policy: Policy) -> ImageFn | None:
    """Random erasing on the normalized float image, or None."""
    if not policy.erasing:
        return None
    from torchvision.transforms import v2

    return v2.RandomErasing(p=float(policy.erasing), value=0)


def as_uint8_image(out: Any, what: str = "the augmentation") -> torch.Tensor:
    """A policy's result back as a uint8 C×H×W tensor (user transforms may return PIL images)."""
    from finetunekit.errors import DataError

    if not isinstance(out, torch.Tensor):
        out = torch.from_numpy(np.array(out, dtype=np.uint8))
        out = out.unsqueeze(0) if out.ndim == 2 else out.permute(2, 0, 1)
    if out.dtype != torch.uint8:
        raise DataError(
            f"{what} returned a {out.dtype} image; expected uint8 C×H×W (finetunekit resizes and normalizes "
            "after it). Drop ToDtype/Normalize from your transform."
        )
    return out


def check_float_augment(policy: Policy) -> None:
    """Float images are already normalized: colour policies and erasing are defined on uint8 pixels."""
    from finetunekit.errors import DataError

    if not policy.light:
        raise DataError(
            f"augment={policy!r} needs uint8 images, but these images are float (already normalized), "
            "which only take the light crop and flip; pass uint8 images or augment=True."
        )
