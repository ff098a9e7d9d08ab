"""ModelCheckpoint with Keras semantics; every save is atomic and checksummed, never pickled."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

from finetunekit.callbacks.backup import check_save_freq
from finetunekit.callbacks.base import Callback, Logs
from finetunekit.callbacks.early_stopping import _direction
from finetunekit.callbacks.monitor import check_monitor, monitored_value
from finetunekit.callbacks.progbar import log_message
from finetunekit.errors import ConfigError
from finetunekit.saving import checkpoint, destinations
from finetunekit.saving.model_folder import atomic_write_bytes, tensors_to_bytes

_MODES = ("auto", "min", "max")


class ModelCheckpoint(Callback):
    """Save the model (or the whole training state) every epoch or every ``save_freq`` batches.

    ``filepath`` may hold Keras placeholders filled from the epoch (1-based, as in Keras) and the logs:
    ``"runs/ckpt-{epoch:02d}-{val_loss:.3f}"``. It names a checkpoint folder that ``FineTuner.load``
    opens; with ``save_weights_only=True`` it may instead end in ``.safetensors`` for a single weights
    file. Without ``save_weights_only`` the folder also holds the optimizer, schedule, callback, loop
    and RNG state (the format BackupAndRestore uses). ``save_best_only=True`` saves only when
    ``monitor`` improves (``mode`` as in EarlyStopping); ``initial_value_threshold`` sets the value to
    beat first. Checkpointing callbacks run after the other callbacks in each hook.
    """

    runs_last = True

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: str | int = "epoch",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ConfigError(f"ModelCheckpoint(mode={mode!r}) is invalid; expected one of {list(_MODES)}")
        self.filepath = os.fspath(filepath)
        if self.filepath.endswith(".safetensors") and not save_weights_only:
            raise ConfigError(
                f"ModelCheckpoint(filepath={self.filepath!r}) ends in .safetensors, which holds weights "
                "only, but save_weights_only=False; expected a folder path for a full checkpoint. Drop the "
                "suffix or pass save_weights_only=True."
            )
        self.monitor = monitor
        self.verbose = verbose
        self.save_best_only = save_best_only
        self.save_weights_only = save_weights_only
        self.mode = mode
        self.save_freq = check_save_freq("ModelCheckpoint", save_freq)
        self._minimize = _direction(monitor, mode) == "min"
        self.best: float | None = initial_value_threshold
        self._batches_seen = 0
        self._warned_missing = False

    # -- hooks -----------------------------------------------------------------------------------------
    def on_train_begin(self, logs: Logs | None = None) -> None:
        """[persist] A read-only, full or file-typed destination fails now, not at the first save; a
        ``monitor`` the logs will not have raises now too (only used with save_best_only)."""
        if self.save_best_only:
            check_monitor("ModelCheckpoint", self.monitor, self.params)
        single = self.filepath.endswith(".safetensors")
        need = sum(t.numel() * t.element_size() for t in self.model.state_dict().values())
        need *= 1 if self.save_weights_only else 3
        what = f"ModelCheckpoint(filepath={self.filepath!r})"
        probe = lambda: destinations.probe_destination(self.filepath, what, need, single)  # noqa: E731
        self.require_run().run_on_main(probe, "ModelCheckpoint")

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        if not isinstance(self.save_freq, int):
            return
        self._batches_seen += 1
        if self._batches_seen % self.save_freq == 0:
            self._maybe_save(self.require_run().epoch, logs or {}, batch + 1)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        if self.save_freq == "epoch":
            self._maybe_save(epoch + 1, logs or {}, 0)

    # -- saving ----------------------------------------------------------------------------------------
    def _improved(self, logs: Mapping[str, Any]) -> bool:
        value = monitored_value("ModelCheckpoint", self.monitor, logs or {}, self.params)
        if value is None:
            # Under fit (params["log_keys"] known) a missing key is an epoch without validation.
            if not self._warned_missing and self.params.get("log_keys") is None:
                self._warned_missing = True
                warnings.warn(
                    f"ModelCheckpoint(save_best_only=True) monitors {self.monitor!r}, which is not in the "
                    f"logs ({', '.join(logs) or 'none'}); nothing is saved. Set monitor= to one of them.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return False
        value = float(value)
        if math.isnan(value):
            return False
        if self.best is None or (value < self.best if self._minimize else value > self.best):
            self.best = value
            return True
        return False

    def _maybe_save(self, epoch: int, logs: Mapping[str, Any], step: int) -> None:
        """``epoch``/``step``: the position after this save (the next batch to run)."""
        if self.save_best_only and not self._improved(logs):
            return
        label = epoch if step == 0 else epoch + 1  # Keras' 1-based number of the epoch just trained
        try:
            path = self.filepath.format(epoch=label, batch=step, **logs)
        except (KeyError, ValueError, IndexError) as e:
            raise ConfigError(
                f"ModelCheckpoint(filepath={self.filepath!r}) has a placeholder that cannot be filled "
                f"({e!r}); expected {{epoch}}, {{batch}} or keys of the logs: {sorted(logs)}"
            ) from e
        run = self.require_run()
        with run.gathered_state():  # [fsdp] every rank joins the gather; rank 0 then writes
            run.run_on_main(lambda: self._write(path, epoch, step), "ModelCheckpoint")
        if self.verbose > 0:
            log_message(f"Epoch {label}: saved checkpoint to {path}")

    def _write(self, path: str, epoch: int, step: int) -> None:
        run = self.require_run()  # the weights written are those validation measured (the EMA when on)
        if path.endswith(".safetensors"):
            try:
                atomic_write_bytes(path, tensors_to_bytes(run.measured_weights()))
            except OSError as e:
                from finetunekit.errors import CheckpointError

                raise CheckpointError(
                    f"could not write {path!r}: {e.strerror or e}; expected a writable folder with free "
                    "space. The previous file there, if any, is intact."
                ) from e
            return
        if self.save_weights_only:
            files, kind = run.model_files(), "weights"
        else:
            files, kind = run.capture_state(epoch, step), "training"
        checkpoint.write_checkpoint(path, files, {"kind": kind})

    # -- state -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "batches_seen": self._batches_seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        best = state.get("best")
        self.best = None if best is None else float(best)
        self._batches_seen = int(state.get("batches_seen", 0))
