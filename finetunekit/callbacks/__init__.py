"""Callbacks with Keras names and semantics: observe training, and stop it when asked.

Strategies change how a model trains; callbacks watch it. A callback sees ``self.tuner``
(the FineTuner), ``self.model`` (its ``nn.Module``) and ``self.params``; setting
``self.tuner.stop_training = True`` stops after the current epoch. Logs are Python floats.
"""

from finetunekit.callbacks.backup import BackupAndRestore
from finetunekit.callbacks.base import Callback
from finetunekit.callbacks.callback_list import CallbackList
from finetunekit.callbacks.csv_logger import CSVLogger
from finetunekit.callbacks.early_stopping import EarlyStopping
from finetunekit.callbacks.history import History
from finetunekit.callbacks.lambda_callback import LambdaCallback
from finetunekit.callbacks.lr_callbacks import LearningRateScheduler, ReduceLROnPlateau
from finetunekit.callbacks.mlflow_logger import MLflowLogger
from finetunekit.callbacks.model_checkpoint import ModelCheckpoint
from finetunekit.callbacks.progbar import ProgbarLogger
from finetunekit.callbacks.retention import RetentionMonitor
from finetunekit.callbacks.tensorboard import TensorBoard
from finetunekit.callbacks.terminate_on_nan import TerminateOnNaN

__all__ = [
    "BackupAndRestore",
    "CSVLogger",
    "Callback",
    "CallbackList",
    "EarlyStopping",
    "History",
    "LambdaCallback",
    "LearningRateScheduler",
    "MLflowLogger",
    "ModelCheckpoint",
    "ProgbarLogger",
    "ReduceLROnPlateau",
    "RetentionMonitor",
    "TensorBoard",
    "TerminateOnNaN",
]
