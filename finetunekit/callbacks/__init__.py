"""Callbacks with Keras names and semantics: observe training, and stop it when asked.

Strategies change how a model trains; callbacks watch it (decision 3). A callback sees ``self.tuner``
(the FineTuner), ``self.model`` (its ``nn.Module``) and ``self.params``; setting
``self.tuner.stop_training = True`` stops after the current epoch. Logs are Python floats.
"""

from finetunekit.callbacks.base import Callback, CallbackList
from finetunekit.callbacks.early_stopping import EarlyStopping
from finetunekit.callbacks.history import History
from finetunekit.callbacks.lambda_callback import LambdaCallback
from finetunekit.callbacks.progbar import ProgbarLogger
from finetunekit.callbacks.retention import RetentionMonitor

__all__ = [
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "ProgbarLogger",
    "RetentionMonitor",
]
