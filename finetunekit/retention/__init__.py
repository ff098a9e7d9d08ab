"""Resisting forgetting: the pretrained snapshot, L2-SP and WiSE-FT interpolation."""

from finetunekit.retention.l2sp import L2SP

__all__ = ["L2SP"]
