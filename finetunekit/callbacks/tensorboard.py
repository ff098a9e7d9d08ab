"""TensorBoard: scalars per epoch (and per batch), each layer group's LR, and the run's hyperparameters.

As ``keras.callbacks.TensorBoard``: ``log_dir/train`` and ``log_dir/validation`` hold ``epoch_<metric>``
at step = epoch, so TensorBoard overlays training and validation curves. Per-batch scalars go to
``log_dir/batch`` at step = global batch index. Needs the ``tensorboard`` extra; only rank 0 writes.

Resume: the step counters are part of the callback's state, so when BackupAndRestore resumes a run the
writers reopen with ``purge_step`` at the first step to be redone; TensorBoard then drops what the
interrupted run wrote from there on, and each step appears once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetunekit.callbacks.base import Callback, Logs
from finetunekit.distributed.env import is_main_process
from finetunekit.errors import ConfigError, MissingDependencyError


def check_update_freq(name: str, update_freq: Any) -> int | None:
    """ "epoch" -> None (epoch scalars only), "batch" -> 1, N -> every N batches."""
    if update_freq == "epoch":
        return None
    if update_freq == "batch":
        return 1
    if isinstance(update_freq, bool) or not isinstance(update_freq, int) or update_freq < 1:
        raise ConfigError(
            f"{name}(update_freq={update_freq!r}): expected 'epoch', 'batch' or a positive int "
            "(log every N batches)"
        )
    return update_freq


def lr_by_group(tuner: Any) -> dict[str, float]:
    """The LR each layer group trains at now (its "/no_decay" twin has the same LR)."""
    optimizer = getattr(tuner, "optimizer", None)
    if optimizer is None:
        return {}
    out: dict[str, float] = {}
    for i, group in enumerate(optimizer.param_groups):
        name = str(group.get("name", f"group{i}")).removesuffix("/no_decay")
        out.setdefault(name, float(group["lr"]))
    return out


def run_hparams(tuner: Any, params: Mapping[str, Any], extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """What identifies a fine-tuning run: backbone, strategy, optimizer and LR, epochs, plus the user's."""
    optimizer = getattr(tuner, "optimizer", None)
    out: dict[str, Any] = {
        "backbone": str(getattr(tuner, "spec", "")),
        "strategy": type(getattr(tuner, "strategy", None)).__name__,
        "optimizer": type(optimizer).__name__ if optimizer is not None else None,
        "epochs": params.get("epochs"),
    }
    with contextlib.suppress(Exception):  # not compiled: a callback driven by hand
        out["lr"] = float(tuner.base_lr)
    out.update(extra or {})
    return {
        k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in out.items() if v is not None
    }


class TensorBoard(Callback):
    """Write logs for TensorBoard (``tensorboard --logdir LOG_DIR``).

    ``update_freq``: "epoch" (default), "batch", or N to also write batch loss / metrics / LRs every N
    batches. ``log_lr``: the LR of every layer group (``epoch_group_lr/<group>``). ``hparams``: extra
    hyperparameters to record next to the automatic ones (backbone, strategy, lr, ...) with the final
    metrics, for TensorBoard's HParams tab.
    """

    def __init__(
        self, log_dir: str | os.PathLike[str] = "logs", update_freq: str | int = "epoch",
        log_lr: bool = True, hparams: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.log_dir = Path(log_dir)
        self.update_freq = check_update_freq("TensorBoard", update_freq)
        self.log_lr = bool(log_lr)
        self.hparams = dict(hparams or {})
        self._writers: dict[str, Any] = {}
        self._epoch = 0  # the epoch in progress (a mid-epoch resume gets no on_epoch_begin)
        self._next = {"epoch": 0, "batch": 0}  # first step not yet written, per step kind
        self._resumed = False
        self._last_logs: Logs = {}

    def _writer(self, run: str) -> Any:
        if run not in self._writers:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise MissingDependencyError(
                    'the TensorBoard callback needs tensorboard. Fix: pip install "finetunekit[tensorboard]"'
                ) from e
            kind = "batch" if run == "batch" else "epoch"
            purge = self._next[kind] if self._resumed else None
            self._writers[run] = SummaryWriter(str(self.log_dir / run), purge_step=purge)
        return self._writers[run]

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if is_main_process():  # all writers now (fails before training if tensorboard is missing), so
            for run in ("train", "validation", *(("batch",) if self.update_freq else ())):
                self._writer(run)  # each purges from the step the restored state says comes next

    def on_epoch_begin(self, epoch: int, logs: Logs | None = None) -> None:
        self._epoch = epoch

    def on_train_batch_end(self, batch: int, logs: Logs | None = None) -> None:
        step = self._epoch * int(self.params.get("steps") or 0) + batch
        self._next["batch"] = step + 1
        if self.update_freq is None or (step + 1) % self.update_freq or not is_main_process():
            return
        writer = self._writer("batch")
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)) and key not in ("batch", "size"):
                writer.add_scalar(f"batch_{key}", value, step)
        if self.log_lr:
            for name, lr in lr_by_group(self.tuner).items():
                writer.add_scalar(f"batch_group_lr/{name}", lr, step)

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        self._next["epoch"] = epoch + 1
        self._last_logs = dict(logs or {})
        if not is_main_process():
            return
        train, val = self._writer("train"), self._writer("validation")
        for key, value in self._last_logs.items():
            if isinstance(value, (int, float)):
                writer, tag = (val, key[4:]) if key.startswith("val_") else (train, key)
                writer.add_scalar(f"epoch_{tag}", value, epoch)
        if self.log_lr:
            for name, lr in lr_by_group(self.tuner).items():
                train.add_scalar(f"epoch_group_lr/{name}", lr, epoch)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs: Logs | None = None) -> None:
        if is_main_process() and self._writers:
            metrics = {
                f"hparam/{k}": float(v) for k, v in self._last_logs.items() if isinstance(v, (int, float))
            }
            if metrics:
                self._writer("train").add_hparams(
                    run_hparams(self.tuner, self.params, self.hparams), metrics, run_name="."
                )
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
        self._resumed = False

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._epoch, "next_epoch": self._next["epoch"], "next_batch": self._next["batch"]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._epoch = int(state.get("epoch", 0))
        self._next = {"epoch": int(state.get("next_epoch", 0)), "batch": int(state.get("next_batch", 0))}
        self._resumed = True
