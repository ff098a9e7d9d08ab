"""What ``compile()`` turns on beside the optimizer: L2-SP (resisting forgetting), batch mixing
(mixup / CutMix), progressive resizing, the train/validation gap logs."""

from finetunekit.techniques.l2sp import L2SP
from finetunekit.techniques.resizing import ProgressiveResizing

__all__ = ["L2SP", "ProgressiveResizing"]
