"""finetunekit: fine-tune pretrained vision models with a Keras-style API."""

from finetunekit.errors import FineTuneKitError

__all__ = ["FineTuneKitError"]
__version__ = "0.1.0"
