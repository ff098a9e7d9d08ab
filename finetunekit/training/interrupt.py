"""Ctrl-C during ``fit``: the optimizer step being computed is applied whole, then training stops.

Python raises KeyboardInterrupt between any two bytecodes, so a Ctrl-C inside ``optimizer.step()`` can
leave some parameters (or moments, or EMA weights, or BatchNorm statistics) updated and others not: a
model that matches no step at all. :func:`deferred_interrupt` holds the signal for the span of one
training step and raises it when the step is complete; a second Ctrl-C during that span interrupts at
once, for a step that hangs.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Raise a Ctrl-C that arrives inside the block when the block ends (a second one: at once).

    Only in the main thread and while Python's own SIGINT handler is installed: another handler (the
    user's, a debugger's) is left alone. The cost is two ``signal.signal`` calls per step.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        if received:
            raise KeyboardInterrupt
        received.append(signum)

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt
