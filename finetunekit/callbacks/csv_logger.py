"""CSVLogger: one row per epoch, Keras format; a resumed run continues the file without duplicates."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetunekit.callbacks.base import Callback, Logs


class CSVLogger(Callback):
    """Append each epoch's logs to ``filename`` as ``epoch,<sorted keys>`` (as ``keras.callbacks.CSVLogger``).

    ``append=False`` starts a new file at ``on_train_begin``. When BackupAndRestore resumes a run, the
    logger keeps the rows written up to the backup and drops later ones (epochs that will be trained
    again), so the file ends up as an uninterrupted run would have written it.
    """

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.filename = Path(filename)
        self.sep = separator
        self.append = append
        self.keys: list[str] | None = None
        self._rows = 0  # data rows this fit has written
        self._resume_rows: int | None = None

    def on_train_begin(self, logs: Logs | None = None) -> None:
        if self._resume_rows is not None:
            self._truncate_to(self._resume_rows)
            self._rows, self._resume_rows = self._resume_rows, None
            return
        self.filename.parent.mkdir(parents=True, exist_ok=True)
        if not self.append or not self.filename.exists():
            self.filename.write_text("")
            self.keys = None
        elif self.keys is None:
            self.keys = self._header_of_existing()
        self._rows = 0

    def on_epoch_end(self, epoch: int, logs: Logs | None = None) -> None:
        logs = dict(logs or {})
        new_file = self.keys is None
        if self.keys is None:
            self.keys = sorted(logs)
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter=self.sep, lineterminator="\n")
        if new_file:
            writer.writerow(["epoch", *self.keys])
        writer.writerow([epoch, *(_fmt(logs.get(k, "NA")) for k in self.keys)])
        with self.filename.open("a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()
        self._rows += 1

    def _header_of_existing(self) -> list[str] | None:
        with self.filename.open(newline="") as f:
            header = next(csv.reader(f, delimiter=self.sep), None)
        return header[1:] if header else None

    def _truncate_to(self, rows: int) -> None:
        if not self.filename.exists():
            return
        lines = self.filename.read_text().splitlines(keepends=True)
        keep = lines[: rows + 1] if rows and self.keys is not None else ([] if not rows else lines)
        self.filename.write_text("".join(keep))
        if not keep:
            self.keys = None

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self._rows, "keys": self.keys}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        keys = state.get("keys")
        self.keys = None if keys is None else [str(k) for k in keys]
        self._resume_rows = int(state.get("rows", 0))


def _fmt(value: Any) -> Any:
    return repr(value) if isinstance(value, float) else value
