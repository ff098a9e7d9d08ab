"""BackupAndRestore: survive a crash, a kill or a pre-empted machine, and continue bitwise where it was.

Keras' BackupAndRestore resumes at the last epoch (or batch) boundary but reshuffles and re-draws
augmentation, so the resumed run is a different run. Here a backup holds the whole training state
(:mod:`finetunekit.training.train_state`): the same script started again continues exactly as if
never stopped.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.progbar import log_message
from finetunekit.errors import CheckpointError, ConfigError
from finetunekit.saving import checkpoint

_PREFIX = "ckpt-"


def check_save_freq(owner: str, save_freq: Any) -> str | int:
    if save_freq == "epoch":
        return "epoch"
    if isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1:
        raise ConfigError(
            f"{owner}(save_freq={save_freq!r}) is invalid; expected 'epoch' or a number of batches >= 1"
        )
    return save_freq


class BackupAndRestore(Callback):
    """Back up the training state to ``backup_dir`` and restore it when ``fit`` starts again.

    ``save_freq="epoch"`` backs up after every epoch (after validation and the other callbacks),
    an int ``N`` after every N batches (counted across epochs). The newest two complete backups are
    kept: if the newest turns out corrupt, the one before is used, with a warning. With
    ``delete_checkpoint=True`` (Keras' default) the backups are removed when training ends normally,
    so the next run starts fresh; a crashed run leaves them for its restart.
    """

    runs_last = True

    def __init__(
        self,
        backup_dir: str | os.PathLike[str],
        save_freq: str | int = "epoch",
        delete_checkpoint: bool = True,
    ) -> None:
        super().__init__()
        self.backup_dir = Path(backup_dir)
        self.save_freq = check_save_freq("BackupAndRestore", save_freq)
        self.delete_checkpoint = delete_checkpoint
        self._batch_freq: int | None = None

    # -- restore (called by fit before on_train_begin) ------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete-looking backups, newest first (each is verified before use)."""
        if not self.backup_dir.is_dir():
            return []
        found = [p for p in self.backup_dir.iterdir() if p.name.startswith(_PREFIX) and p.is_dir()]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def restore_fit(self) -> Any:
        """Restore the newest good backup into the running fit; None when there is none."""
        from finetunekit.training.train_state import restore

        for folder in self.checkpoints():
            try:
                checkpoint.verify(folder)
            except CheckpointError as e:
                # Removed, so that it is neither tried again nor counted among the two backups kept.
                warnings.warn(f"skipping (and removing) a bad backup: {e}", RuntimeWarning, stacklevel=2)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            point = restore(self.tuner, folder)
            self._say_resumed(point, folder)
            return point
        return None

    def _say_resumed(self, point: Any, folder: Path) -> None:
        """One line, when fit shows progress: where the run continues (epoch 1-based, step = batches of
        that epoch already done), so a resumed run is never mistaken for a fresh one."""
        from finetunekit.distributed import is_main_process

        if self.params.get("verbose", 0) and is_main_process():
            steps = self.params.get("steps")
            of = f" of {steps}" if steps else ""
            log_message(
                f"BackupAndRestore: resumed from epoch {point.epoch + 1}, step {point.step}{of} "
                f"(backup {folder})"
            )

    # -- saving ----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Logs | None = None) -> None:
        from finetunekit.training.loader_state import why_not_repositionable

        self._batch_freq = self.save_freq if isinstance(self.save_freq, int) else None
        reason = why_not_repositionable(self.tuner._run.loader)
        if self._batch_freq is not None and reason is not None:
            warnings.warn(
                f"BackupAndRestore(save_freq={self.save_freq}) backs up at epoch ends instead: {reason}, "
                "so a mid-epoch backup could not resume exactly.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._batch_freq = None
        self._remove_partials()

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self._batch_freq is None:
            return
        ctx = self.tuner._run.ctx
        done = ctx.epoch * ctx.steps_per_epoch + batch + 1
        if done % self._batch_freq == 0:
            self._save(ctx.epoch, batch + 1)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._batch_freq is None:
            self._save(epoch + 1, 0)

    def on_train_end(self, logs: Logs | None = None) -> None:
        from finetunekit.training.train_state import on_main_rank

        def delete() -> None:
            for folder in self.checkpoints():
                shutil.rmtree(folder, ignore_errors=True)
            self._remove_partials()

        if self.delete_checkpoint:
            on_main_rank(self.tuner, delete, "BackupAndRestore cleanup")

    def _save(self, epoch: int, step: int) -> None:
        from finetunekit.training.train_state import capture, on_main_rank

        def write() -> None:
            name = f"{_PREFIX}e{epoch:06d}-s{step:07d}"
            files = capture(self.tuner, epoch, step)
            checkpoint.write_checkpoint(self.backup_dir / name, files, {"kind": "training"})
            for old in self.checkpoints()[2:]:  # the newest two stay: the second is the fallback
                shutil.rmtree(old, ignore_errors=True)

        on_main_rank(self.tuner, write, "BackupAndRestore")

    def _remove_partials(self) -> None:
        if self.backup_dir.is_dir():
            for p in self.backup_dir.iterdir():
                if p.name.startswith(f".{_PREFIX}") and ".partial-" in p.name:
                    shutil.rmtree(p, ignore_errors=True)
