"""TerminateOnNaN: stop training gracefully at the first non-finite loss (Keras name)."""

from __future__ import annotations

import math

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.progbar import log_message


class TerminateOnNaN(Callback):
    """Stop at a NaN or infinite loss, keeping the weights of the last good step.

    It switches this fit's non-finite policy to ``"stop"`` (see ``compile(on_nonfinite=...)``): the bad
    step is detected before ``optimizer.step()`` and never applied, then ``on_epoch_end`` and
    ``on_train_end`` run as after any stop. Keras only looks at the batch logs, after the bad update.
    """

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self.run is not None:
            self.run.set_nonfinite_policy("stop")

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        loss = (logs or {}).get("loss")
        stopping = self.run is not None and self.run.stop_requested
        if stopping or (loss is not None and not math.isfinite(float(loss))):
            log_message(f"Batch {batch}: invalid loss, terminating training")
            self.tuner.stop_training = True
