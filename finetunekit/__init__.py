"""finetunekit: fine-tune pretrained vision models with a Keras-style API.

``FineTuner`` is imported lazily so ``import finetunekit`` stays fast (torch, timm and torchvision load
on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finetunekit.errors import FineTuneKitError

if TYPE_CHECKING:
    from finetunekit.backbones import list_backbones
    from finetunekit.techniques import L2SP, ProgressiveResizing
    from finetunekit.tools.selection import rank_backbones
    from finetunekit.tuner import FineTuner

__all__ = ["L2SP", "FineTuneKitError", "FineTuner", "ProgressiveResizing", "list_backbones", "rank_backbones"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "FineTuner":
        from finetunekit.tuner import FineTuner

        return FineTuner
    if name == "list_backbones":
        from finetunekit.backbones import list_backbones

        return list_backbones
    if name == "rank_backbones":
        from finetunekit.tools.selection import rank_backbones

        return rank_backbones
    if name in ("L2SP", "ProgressiveResizing"):
        from finetunekit import techniques

        return getattr(techniques, name)
    raise AttributeError(f"module 'finetunekit' has no attribute {name!r}")
