"""What ``fit``'s default ``augment=True`` means when only the head trains: no augmentation, cached features.

A frozen backbone with a trainable head is a linear probe. The linear-probe literature (SimCLR, MoCo,
CLIP, DINOv2 report probes on un-augmented features) trains it on the features of the plain images, and
measured here it is also the better use of time: un-augmented images map to the same features every
epoch, so the feature cache runs the backbone once and every later epoch trains only the head (72x
faster than a plain frozen loop on CPU), and on digits with ImageNet Lite0 weights it reached 0.752 test
accuracy against 0.608 for augmented, uncached epochs (three seeds; docs/performance.md). So when
every epoch of a fit trains only the head and the cache can run, ``fit(augment=True)`` (the default)
trains on un-augmented images; ``fit(augment="always")`` keeps augmenting (and the cache stays off).
The choice is said once in the fit log and in ``summary()``.

Fits where more than the head trains in some epoch (full fine-tuning, ``LPFT``'s second phase,
``GradualUnfreeze`` once a group opens) augment as asked: augmentation is set per fit, not per epoch.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, Dataset

from finetunekit.strategies import Plan
from finetunekit.training.feature_cache import only_head_trains

logger = logging.getLogger("finetunekit")

ALWAYS = "always"


@dataclass(frozen=True)
class AugmentChoice:
    """``augment``: what the training data is prepared with; ``note``: why, when fit changed it."""

    augment: Any
    note: str | None = None


def choose_augment(
    augment: Any,
    plans: Sequence[Plan],
    data: Any,
    *,
    cache_off: str | None,
    train_bn: bool,
) -> AugmentChoice:
    """The training data's augmentation for a fit whose epochs follow ``plans``.

    ``data``: fit's ``x`` (a DataLoader, or a Dataset with its own transform, is used as given and the
    cache cannot run on it, so augmentation stays). ``cache_off``: fit's reason the feature cache cannot
    run (cache_features=False, DDP, mixup), or None. Only ``augment=True`` is ever changed, and only
    when dropping augmentation lets the cache run.
    """
    if isinstance(augment, str) and augment == ALWAYS:
        return AugmentChoice(True)
    if augment is not True:  # False, a preset, a timm string, a transform: as given (data.augment checks)
        return AugmentChoice(augment)
    if not plans or not all(only_head_trains(p) for p in plans):
        return AugmentChoice(True)
    if cache_off is not None or train_bn or not _cacheable(data):
        return AugmentChoice(True)
    return AugmentChoice(
        False,
        "augmentation: off, because only the head trains: it learns from the backbone's features of the "
        "un-augmented images, computed once (the linear-probe choice; fit(augment='always') augments "
        "every epoch instead, uncached)",
    )


def _cacheable(data: Any) -> bool:
    """Whether the feature cache can index ``data`` per sample with our transform alone (the rules of
    ``feature_cache.static_reason``)."""
    if isinstance(data, DataLoader):
        return False
    if isinstance(data, Dataset):
        return not (getattr(data, "transform", None) or getattr(data, "transforms", None))
    return True


def announce(choice: AugmentChoice, verbose: Any) -> None:
    """Say the choice once per fit: on stdout with the progress output, and in the log."""
    if choice.note is None:
        return
    logger.info(choice.note)
    if verbose:
        print(choice.note)


def summary_line(choice: AugmentChoice | None) -> str:
    """The line ``summary()`` adds after the feature cache's, or "" when fit did not change anything."""
    return "" if choice is None or choice.note is None else f"\n{choice.note}"
