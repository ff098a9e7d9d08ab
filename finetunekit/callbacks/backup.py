"""BackupAndRestore: survive a crash, a kill or a pre-empted machine, and continue bitwise where it was.

Keras' BackupAndRestore resumes at the last epoch (or batch) boundary but reshuffles and re-draws
augmentation, so the resumed run is a different run. Here a backup holds the whole training state (every
part the fit registered, captured through the callback's RunView): the same script started again
continues exactly as if never stopped.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from pathlib import Path
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.progbar import log_message
from finetunekit.errors import CheckpointError, ConfigError
from finetunekit.saving import checkpoint, destinations
from finetunekit.saving.files import probe_writable

_PREFIX = "ckpt-"
_NAME = re.compile(r"^ckpt-e\d{6}-s\d{7}$")  # [persist] exactly the names _save writes
WRITER = "BackupAndRestore"  # [persist] in the manifest: what proves a backup is ours to remove


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
        found = [p for p in self.backup_dir.iterdir() if _NAME.match(p.name) and p.is_dir()]
        return sorted(found, key=lambda p: p.name, reverse=True)

    def restore_fit(self) -> None:
        """Ask the fit to restore the newest good backup (fit calls this before on_train_begin)."""
        run = self.require_run()
        for folder in self.checkpoints():
            try:
                checkpoint.verify(folder)
            except CheckpointError as e:
                _set_aside(folder, e)  # [persist] renamed, never deleted: it is not provably ours
                continue
            run.request_restore(folder)
            return

    def on_restored(self, point: Any, folder: Path) -> None:
        """Called by the fit once the backup it asked for is restored: one line, when fit shows progress,
        saying where the run continues (epoch 1-based, step = batches of that epoch already done), so a
        resumed run is never mistaken for a fresh one."""
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
        self._batch_freq = self.save_freq if isinstance(self.save_freq, int) else None
        reason = self.require_run().exact_resume_problem
        if self._batch_freq is not None and reason is not None:
            warnings.warn(
                f"BackupAndRestore(save_freq={self.save_freq}) backs up at epoch ends instead: {reason}, "
                "so a mid-epoch backup could not resume exactly.",
                RuntimeWarning,
                stacklevel=2,
            )
            self._batch_freq = None
        self._remove_partials()
        need = 3 * sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        what = f"BackupAndRestore(backup_dir={str(self.backup_dir)!r})"  # [persist] probe before step 1
        self.require_run().run_on_main(
            lambda: probe_writable(self.backup_dir, what, need), "BackupAndRestore"
        )

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if self._batch_freq is None:
            return
        run = self.require_run()
        done = run.epoch * run.steps_per_epoch + batch + 1
        if done % self._batch_freq == 0:
            self._save(run.epoch, batch + 1)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self._batch_freq is None:
            self._save(epoch + 1, 0)

    def on_train_end(self, logs: Logs | None = None) -> None:
        def delete() -> None:
            for folder in self._own(self.checkpoints()):
                shutil.rmtree(folder, ignore_errors=True)
            self._remove_partials()

        if self.delete_checkpoint:
            self.require_run().run_on_main(delete, "BackupAndRestore cleanup")

    def _save(self, epoch: int, step: int) -> None:
        run = self.require_run()

        def write() -> None:
            name = f"{_PREFIX}e{epoch:06d}-s{step:07d}"
            files = run.capture_state(epoch, step)
            checkpoint.write_checkpoint(self.backup_dir / name, files, {"kind": "training", "writer": WRITER})
            for old in self._own(self.checkpoints())[2:]:  # the newest two stay: the second is the fallback
                shutil.rmtree(old, ignore_errors=True)

        with run.gathered_state():  # [fsdp] every rank joins the gather; rank 0 then writes
            run.run_on_main(write, "BackupAndRestore")

    def _remove_partials(self) -> None:
        """Only staging folders of writes provably killed (see finetunekit.saving.checkpoint)."""
        destinations.remove_abandoned_staging(self.backup_dir, _PREFIX)

    @staticmethod
    def _own(folders: list[Path]) -> list[Path]:
        """The backups this callback wrote (its manifest marker), so nothing else is ever removed."""
        return [f for f in folders if destinations.written_by(f, WRITER)]


def _set_aside(folder: Path, error: CheckpointError) -> None:
    """A backup that cannot be used: one of a newer finetunekit stops the fit (it is valid, for that
    version); a corrupt one is renamed ``<name>.corrupt-<id>`` so it is neither retried nor counted
    among the two kept, and nothing is deleted."""
    version = destinations.newer_format(folder)
    if version is not None:
        raise CheckpointError(
            f"backup {str(folder)!r} was written by a newer finetunekit (format_version {version}; this "
            f"one reads up to {checkpoint.FORMAT_VERSION}); it was left untouched. Upgrade finetunekit to "
            "resume from it, or point backup_dir at another folder to start fresh."
        ) from error
    if not destinations.written_by(folder, WRITER):  # not provably a backup of ours: not even renamed
        warnings.warn(f"skipping {str(folder)!r}, which is not a usable backup (left untouched): {error}",
                      RuntimeWarning, stacklevel=3)  # fmt: skip
        return
    aside = folder.with_name(f"{folder.name}.corrupt-{uuid.uuid4().hex[:6]}")
    os.replace(folder, aside)
    warnings.warn(
        f"skipping a bad backup (kept as {str(aside)!r} for inspection; delete it when done): {error}",
        RuntimeWarning,
        stacklevel=3,
    )
