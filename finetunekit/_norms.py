"""The normalization layer types, named once, through torch's public classes.

torch's common base classes (``_BatchNorm``, ``_NormBase``) are private; the public classes below cover
every BatchNorm and InstanceNorm (timm's ``BatchNormAct2d`` subclasses ``BatchNorm2d``; a lazy layer
becomes its plain class at its first forward, and is listed for the time before).
"""

from __future__ import annotations

from torch import nn

BATCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
    nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d,
)  # fmt: skip
"""Layers that keep running statistics and behave differently in train and eval mode."""

INSTANCE_NORMS: tuple[type[nn.Module], ...] = (
    nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d,
    nn.LazyInstanceNorm1d, nn.LazyInstanceNorm2d, nn.LazyInstanceNorm3d,
)  # fmt: skip

NORMS: tuple[type[nn.Module], ...] = (*BATCH_NORMS, *INSTANCE_NORMS, nn.LayerNorm, nn.GroupNorm)
"""Every normalization layer whose affine parameters count as norm parameters."""
