"""What ``fit`` says when Ctrl-C stops it: what was kept, and how to resume.

Keras leaves a KeyboardInterrupt to the user with nothing said, and the History of the interrupted fit
is lost. Here ``fit`` keeps ``ft.history`` (the completed epochs) and the weights of the last complete
optimizer step (``finetunekit.training.interrupt``), closes the progress bar, and prints one message
before the KeyboardInterrupt goes on to the caller.
"""

from __future__ import annotations

from typing import Any

from finetunekit.callbacks.backup import BackupAndRestore
from finetunekit.callbacks.progbar import ProgbarLogger, log_message


def interrupt_message(callbacks: Any, epoch: int, step: int | None, epochs: int, steps: int) -> str:
    """The message for a fit stopped by Ctrl-C in (0-based) ``epoch`` after (0-based) batch ``step``."""
    history = getattr(callbacks, "history", None)
    done = len(history.epoch) if history is not None else 0
    where = f"epoch {epoch + 1}/{epochs}"
    where += f" after batch {step + 1} of {steps}" if step is not None else " before its first batch"
    kept = (
        f"ft.history holds the {done} completed epoch{'s' if done != 1 else ''} of this fit and ft.model the "
        "weights after the last complete optimizer step."
    )
    backups = [cb for cb in callbacks if isinstance(cb, BackupAndRestore)]
    if backups:
        resume = (
            f"Run the same fit again to resume from the last backup in {str(backups[0].backup_dir)!r} "
            "(BackupAndRestore)."
        )
    else:
        resume = (
            "To resume an interrupted run exactly where it stopped, pass "
            "callbacks=[BackupAndRestore('runs/backup', save_freq=100)] and run the same fit again after "
            f"an interruption; from these weights, fit(..., initial_epoch={epoch}) continues the epoch count."
        )
    return f"Training interrupted (KeyboardInterrupt) in {where}. Kept: {kept} {resume}"


def report_interrupt(callbacks: Any, epoch: int, step: int | None, epochs: int, steps: int) -> None:
    """Close the progress bar and print :func:`interrupt_message` (on the main process)."""
    from finetunekit.distributed import is_main_process

    for cb in callbacks:
        if isinstance(cb, ProgbarLogger):
            cb.close()
    if is_main_process():
        log_message(interrupt_message(callbacks, epoch, step, epochs, steps))
