"""ProgbarLogger: Keras-style progress output for ``fit`` through tqdm (terminal or notebook)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from finetunekit.callbacks.base import Callback, Logs

# Keys some loops put in batch logs that are bookkeeping, not metrics (Keras 2 did).
_SKIP_KEYS = frozenset({"batch", "size", "num_steps"})


def format_logs(logs: Mapping[str, Any] | None) -> str:
    """``"loss: 0.4123 - accuracy: 0.8800"``; tiny values (an LR) in exponent form, as Keras prints them."""
    parts = []
    for key, value in (logs or {}).items():
        if key in _SKIP_KEYS:
            continue
        if isinstance(value, float | int) and not isinstance(value, bool):
            text = f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.4e}"
        else:
            text = str(value)
        parts.append(f"{key}: {text}")
    return " - ".join(parts)


def log_message(message: str) -> None:
    """Print a line without tearing an active progress bar (tqdm moves the bar below the line)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


class ProgbarLogger(Callback):
    """Prints training progress; ``fit`` adds one when ``verbose != 0``.

    ``verbose=1``: one tqdm bar per epoch over ``params["steps"]`` batches (a counter with rate when
    ``steps`` is None), described ``Epoch e/E``, with the running batch logs as postfix and the full
    epoch logs, ``val_`` metrics included, on the finished bar. ``verbose=2``: one line per epoch,
    ``Epoch 3/5 - 12.3s - loss: 0.4123 - accuracy: 0.8800 - val_loss: ...``, which reads well in log
    files where bars turn into noise.

    Per batch the cost is one clock read and tqdm's own ``update``: the postfix string is formatted
    only once per ``mininterval`` seconds, when tqdm is about to redraw anyway, not on every step.
    """

    def __init__(self, mininterval: float = 0.1) -> None:
        super().__init__()
        self.mininterval = mininterval
        self._bar: Any = None
        self._epoch_start = 0.0
        self._last_postfix = 0.0
        self._epoch = 0

    @property
    def verbose(self) -> int:
        from finetunekit.distributed import is_main_process

        if not is_main_process():  # [distributed] one progress bar per job, on rank 0
            return 0
        return int(self.params.get("verbose", 1) or 0)

    def _epoch_label(self, epoch: int) -> str:
        epochs = self.params.get("epochs")
        return f"Epoch {epoch + 1}/{epochs}" if epochs else f"Epoch {epoch + 1}"

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        if self.verbose == 1:
            from tqdm.auto import tqdm

            self._close_bar()
            self._bar = tqdm(
                total=self.params.get("steps"),
                desc=self._epoch_label(epoch),
                unit="step",
                mininterval=self.mininterval,
                leave=True,
                dynamic_ncols=True,
            )
            self._last_postfix = time.monotonic()

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        bar = self._bar
        if bar is None:
            return
        now = time.monotonic()
        if logs and now - self._last_postfix >= self.mininterval:
            bar.set_postfix_str(format_logs(logs), refresh=False)
            self._last_postfix = now
        bar.update(1)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.verbose == 2:
            elapsed = time.perf_counter() - self._epoch_start
            line = f"{self._epoch_label(epoch)} - {elapsed:.1f}s"
            text = format_logs(logs)
            log_message(f"{line} - {text}" if text else line)
        elif self._bar is not None:
            self._bar.set_postfix_str(format_logs(logs), refresh=False)
            self._close_bar()

    def on_train_end(self, logs: Logs | None = None) -> None:
        # A stop inside an epoch (TerminateOnNaN) or an interrupted epoch leaves a bar open.
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # close() redraws once, so the final postfix is shown
            self._bar = None
