"""ProgbarLogger: Keras-style progress output for ``fit``, ``evaluate`` and ``predict`` through tqdm.

A bar line must fit the terminal, or tqdm cuts its end off, and the end is where ``val_loss`` and
``val_accuracy`` are. So the bar shows short values (4 significant digits) chosen by priority, validation
first, as many as the terminal's width leaves room for; ``lr`` and the ``gap_`` keys stay out of the bar.
Every key is in History and in the ``verbose=2`` line.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.errors import ConfigError

# Keys some loops put in batch logs that are bookkeeping, not metrics (Keras 2 did).
_SKIP_KEYS = frozenset({"batch", "size", "num_steps"})
_BAR = 10  # width of the bar itself, as in the templates below
# tqdm line templates: while running, and once finished (nothing remains, so no "<remaining").
_RUNNING = "{desc} {n_fmt}/{total_fmt} |{bar:10}| {elapsed}<{remaining}{postfix}"
_FINISHED = "{desc} {n_fmt}/{total_fmt} |{bar:10}| {elapsed}{postfix}"
_UNKNOWN_TOTAL = "{desc} {n_fmt} steps [{elapsed}, {rate_fmt}]{postfix}"


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


def _short(value: Any) -> str:
    """4 significant digits; a float keeps a decimal point (``1.0``, not ``1``)."""
    if isinstance(value, bool) or not isinstance(value, float | int):
        return str(value)
    text = f"{value:.4g}"
    return f"{text}.0" if isinstance(value, float) and text.lstrip("-").isdigit() else text


def _priority(key: str) -> int:
    if key == "val_loss":
        return 0
    if key.startswith("val_"):
        return 1
    return 2 if key == "loss" else 3


def bar_postfix(logs: Mapping[str, Any] | None, width: int) -> str:
    """``"loss=0.4123 val_loss=0.4412 val_accuracy=0.87"``: at most ``width`` characters.

    Values are picked by priority (``val_loss``, the other ``val_`` metrics, ``loss``, the rest) and
    shown in the logs' own order; ``lr`` and ``gap_`` keys are left to History and ``verbose=2``.
    """
    items = [
        (key, f"{key}={_short(value)}")
        for key, value in (logs or {}).items()
        if key not in _SKIP_KEYS and key != "lr" and not key.startswith("gap_")
    ]
    chosen: set[str] = set()
    used = 0
    for key, text in sorted(items, key=lambda item: _priority(item[0])):
        cost = len(text) + (1 if chosen else 0)
        if used + cost <= width:
            chosen.add(key)
            used += cost
    return " ".join(text for key, text in items if key in chosen)


def resolve_verbose(owner: str, verbose: Any) -> int:
    """``verbose`` of evaluate / predict as 0, 1 or 2 (``"auto"`` is 1, as in Keras)."""
    if verbose == "auto":
        return 1
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ConfigError(
            f"{owner}(verbose={verbose!r}) is invalid; expected 'auto', 0 (silent), 1 (progress bar) or 2 "
            "(one line at the end)"
        )
    return int(verbose)


def num_steps(loader: Any) -> int | None:
    """Batches in a loader, or None when it has no length (the bar then counts without a total)."""
    try:
        return len(loader)
    except TypeError:
        return None


def log_message(message: str) -> None:
    """Print a line without tearing an active progress bar (tqdm moves the bar below the line)."""
    from tqdm.auto import tqdm

    tqdm.write(message)


class ProgbarLogger(Callback):
    """Prints progress; ``fit`` adds one when ``verbose != 0``, as do ``evaluate`` and ``predict``.

    ``verbose=1``: one tqdm bar per epoch over ``params["steps"]`` batches (a counter with rate when
    ``steps`` is None), described ``Epoch e/E``, with the running batch logs as postfix and the epoch's
    logs, ``val_`` metrics first, on the finished bar; the line fits the terminal width (see
    :func:`bar_postfix`). ``evaluate`` and ``predict`` get one bar (``Evaluate`` / ``Predict``).
    ``verbose=2``: one line per epoch, ``Epoch 3/5 - 12.3s - loss: 0.4123 - accuracy: 0.8800 - ...``,
    which reads well in log files where bars turn into noise, and one line at the end of ``evaluate`` /
    ``predict``.

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
        self._in_fit = False  # validation inside fit draws no bar of its own

    @property
    def verbose(self) -> int:
        from finetunekit.distributed import is_main_process

        if not is_main_process():  # [distributed] one progress bar per job, on rank 0
            return 0
        return int(self.params.get("verbose", 1) or 0)

    def _epoch_label(self, epoch: int) -> str:
        epochs = self.params.get("epochs")
        return f"Epoch {epoch + 1}/{epochs}" if epochs else f"Epoch {epoch + 1}"

    def _postfix_width(self, finished: bool = False) -> int:
        """Columns left for the postfix on a bar line: the terminal's width less the template's fixed
        parts (``elapsed`` and ``remaining`` are 5 characters each, 2 more allowed for hour-long epochs)."""
        columns = shutil.get_terminal_size((80, 24)).columns
        total = self.params.get("steps")
        desc = self._bar.desc if self._bar is not None else ""
        if not total:
            fixed = len(desc) + 42  # n, "steps", elapsed and a rate such as "123.4step/s"
        else:
            fixed = len(desc) + 2 * len(str(total)) + _BAR + (13 if finished else 19) + 2
        return max(0, columns - 1 - fixed)

    def _open_bar(self, desc: str) -> None:
        from tqdm.auto import tqdm

        self._close_bar()
        total = self.params.get("steps")
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="step",
            mininterval=self.mininterval,
            leave=True,
            dynamic_ncols=True,
            bar_format=_RUNNING if total else _UNKNOWN_TOTAL,
        )
        self._last_postfix = time.monotonic()

    def _advance(self, logs: Logs | None) -> None:
        bar = self._bar
        if bar is None:
            return
        now = time.monotonic()
        if logs and now - self._last_postfix >= self.mininterval:
            bar.set_postfix_str(bar_postfix(logs, self._postfix_width()), refresh=False)
            self._last_postfix = now
        bar.update(1)

    def _finish_bar(self, logs: Logs | None) -> None:
        if self._bar is None:
            return
        if self.params.get("steps"):
            self._bar.bar_format = _FINISHED
        self._bar.set_postfix_str(bar_postfix(logs, self._postfix_width(finished=True)), refresh=False)
        self._close_bar()

    # -- fit -------------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Logs | None = None) -> None:
        self._in_fit = True

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch = epoch
        self._epoch_start = time.perf_counter()
        if self.verbose == 1:
            self._open_bar(self._epoch_label(epoch))

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._advance(logs)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.verbose == 2:
            elapsed = time.perf_counter() - self._epoch_start
            line = f"{self._epoch_label(epoch)} - {elapsed:.1f}s"
            text = format_logs(logs)
            log_message(f"{line} - {text}" if text else line)
        else:
            self._finish_bar(logs)

    def on_train_end(self, logs: Logs | None = None) -> None:
        # A stop inside an epoch (TerminateOnNaN) or an interrupted epoch leaves a bar open.
        self._close_bar()
        self._in_fit = False

    # -- evaluate and predict (not the validation inside fit) -----------------------------------------
    def _begin_pass(self, desc: str) -> None:
        self._epoch_start = time.perf_counter()
        if not self._in_fit and self.verbose == 1:
            self._open_bar(desc)

    def _end_pass(self, desc: str, logs: Logs | None) -> None:
        if self._in_fit:
            return
        if self.verbose == 2:
            elapsed = time.perf_counter() - self._epoch_start
            text = format_logs(logs)
            steps = self.params.get("steps")
            head = f"{desc} - {steps} steps - {elapsed:.1f}s" if steps else f"{desc} - {elapsed:.1f}s"
            log_message(f"{head} - {text}" if text else head)
        self._finish_bar(logs)

    def on_test_begin(self, logs: Logs | None = None) -> None:
        self._begin_pass("Evaluate")

    def on_test_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if not self._in_fit:
            self._advance(logs)

    def on_test_end(self, logs: Logs | None = None) -> None:
        self._end_pass("Evaluate", logs)

    def on_predict_begin(self, logs: Logs | None = None) -> None:
        self._begin_pass("Predict")

    def on_predict_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        self._advance(None)  # the outputs are arrays, not values to show

    def on_predict_end(self, logs: Logs | None = None) -> None:
        self._end_pass("Predict", logs)

    def close(self) -> None:
        """Close an open bar (a fit interrupted by Ctrl-C gets no on_train_end)."""
        self._close_bar()
        self._in_fit = False

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()  # close() redraws once, so the final postfix is shown
            self._bar = None
