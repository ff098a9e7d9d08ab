"""Errors the library raises, all subclasses of :class:`FineTuneKitError`.

Every message names the bad value, what was expected and how to fix it, so a user can act on it
without reading our source. Subclasses also derive from the builtin a user would naturally catch
(``ValueError``, ``TypeError``, ...), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class FineTuneKitError(Exception):
    """Base of every error finetunekit raises on purpose."""


class ConfigError(FineTuneKitError, ValueError):
    """An argument to FineTuner, compile, fit, evaluate or predict has a bad value."""


class BackboneNotFoundError(FineTuneKitError, ValueError):
    """The backbone name is in neither registry."""


class PretrainedWeightsUnavailableError(FineTuneKitError, RuntimeError):
    """The registry's pretrained weights could not be fetched (offline, no cache)."""


class WeightsMismatchError(FineTuneKitError, ValueError):
    """A local weights file does not fit the backbone."""


class HeadNotFoundError(FineTuneKitError, ValueError):
    """The classifier of a generic module could not be found unambiguously."""


class DataError(FineTuneKitError, ValueError):
    """Images, labels or a data set are unusable as given."""


class DataTypeError(FineTuneKitError, TypeError):
    """Data of a type finetunekit cannot take."""


class NotCompiledError(FineTuneKitError, RuntimeError):
    """A method needs ``compile()`` state that is missing."""


class CheckpointError(FineTuneKitError, ValueError):
    """A saved model or checkpoint is missing, corrupt, unsafe or of another configuration."""


class NonFiniteLossError(FineTuneKitError, FloatingPointError):
    """The training loss became NaN or infinite."""


class MissingDependencyError(FineTuneKitError, ImportError):
    """An optional package a feature needs (e.g. matplotlib for plots) is not installed."""


class DistributedError(FineTuneKitError, RuntimeError):
    """Multi-process training cannot continue: a setting does not fit the job, or another rank failed."""
