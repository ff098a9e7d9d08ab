"""BackupAndRestore removes only what it can prove it wrote, and both checkpointing callbacks find an
unusable destination at train begin, before the first step, rather than at their first save."""

from __future__ import annotations

import json
import os
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from helpers import make_images
from saving_harness import same, snapshot, tuner, weights

from finetunekit.callbacks import BackupAndRestore, LambdaCallback, ModelCheckpoint
from finetunekit.errors import CheckpointError
from finetunekit.saving import files as fs

X, Y = make_images(48, 3, 16, seed=1)


def fit(callbacks: list[Any], epochs: int = 2) -> Any:
    ft = tuner()
    ft.fit(X, Y, batch_size=8, epochs=epochs, verbose=0, callbacks=callbacks)
    return ft


def test_a_newer_versions_backup_stops_the_fit_and_is_kept(tmp_path: Path) -> None:
    fit([BackupAndRestore(tmp_path / "bk", delete_checkpoint=False)], epochs=1)
    (backup,) = BackupAndRestore(tmp_path / "bk").checkpoints()
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["format_version"] = 2
    (backup / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(tmp_path / "bk")
    ft = tuner()
    start = weights(ft)
    with pytest.raises(CheckpointError, match="newer finetunekit.*left untouched"):
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[BackupAndRestore(tmp_path / "bk")])
    assert snapshot(tmp_path / "bk") == before
    assert same(weights(ft), start)


def _users_folders(bk: Path) -> list[Path]:
    """Things a user keeps in backup_dir: folders named ckpt-*, one even named like a backup, and a
    folder that looks like a staging folder but holds their files."""
    made = []
    for name, content in [
        ("ckpt-best", "w"),
        ("ckpt-e000000-s0000001", "x"),
        (".ckpt-e1.partial-0123abcd", "y"),
    ]:
        (bk / name).mkdir(parents=True)
        (bk / name / "notes.txt").write_text(content)
        made.append(bk / name)
    return made


def test_only_its_own_backups_are_removed(tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    mine = _users_folders(bk)
    with pytest.warns(RuntimeWarning, match="not a usable backup .left untouched"):
        fit([BackupAndRestore(bk, save_freq=2)])  # many backups written, rotated and deleted at the end
    left = sorted(p.name for p in bk.iterdir())
    assert [p.name for p in mine if p.exists()] == [p.name for p in mine], left
    assert all((p / "notes.txt").exists() for p in mine)
    assert not [n for n in left if n.startswith("ckpt-e") and n != "ckpt-e000000-s0000001"]


def test_a_killed_backups_staging_folder_is_removed_a_live_one_is_not(tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    dead = bk / ".ckpt-e000001-s0000000.partial-0000aaaa"
    dead.mkdir(parents=True)
    (dead / ".finetunekit-writing").write_text("")
    (dead / "model.safetensors").write_bytes(b"half")
    live = bk / ".ckpt-e000002-s0000000.partial-0000bbbb"
    live.mkdir()
    fd = os.open(live / ".finetunekit-writing", os.O_RDWR | os.O_CREAT)
    try:
        fs.hold_lock(fd)  # another process still writing it (here: this one holds the lock)
        fit([BackupAndRestore(bk)], epochs=1)
        assert not dead.exists() and live.exists()
    finally:
        os.close(fd)


Usage = namedtuple("Usage", "total used free")


def _step_counter() -> tuple[list[int], LambdaCallback]:
    steps: list[int] = []
    return steps, LambdaCallback(on_train_batch_begin=lambda batch, logs: steps.append(batch))


DESTINATIONS: list[tuple[str, str, str]] = [
    ("backup_dir is a file", "backup", "is a file"),
    ("backup_dir under /proc", "backup-proc", "cannot write"),
    ("backup_dir full", "backup-full", "MiB free"),
    ("checkpoint path is a file", "ckpt-file", "is a file"),
    ("checkpoint parent is a file", "ckpt-parent", "is a file"),
    ("checkpoint folder holds user files", "ckpt-user", "would be lost"),
    ("checkpoint folder under /proc", "ckpt-proc", "cannot write"),
    ("weights file path is a folder", "ckpt-weights-dir", "is a folder"),
    ("checkpoint with placeholders, full", "ckpt-full", "MiB free"),
]


def _destination(kind: str, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    (tmp / "file").write_text("mine")
    if kind.endswith("full"):
        monkeypatch.setattr(fs.shutil, "disk_usage", lambda p: Usage(10**9, 10**9 - 100, 100))
    if kind == "backup":
        return BackupAndRestore(tmp / "file")
    if kind == "backup-proc":
        return BackupAndRestore("/proc/finetunekit-test/bk")
    if kind == "backup-full":
        return BackupAndRestore(tmp / "bk")
    if kind == "ckpt-file":
        return ModelCheckpoint(tmp / "file")
    if kind == "ckpt-parent":
        return ModelCheckpoint(tmp / "file" / "ckpt-{epoch}")
    if kind == "ckpt-user":
        (tmp / "run").mkdir()
        (tmp / "run" / "data.csv").write_text("1,2")
        return ModelCheckpoint(tmp / "run")
    if kind == "ckpt-proc":
        return ModelCheckpoint("/proc/finetunekit-test/ckpt-{epoch}")
    if kind == "ckpt-weights-dir":
        (tmp / "w.safetensors").mkdir()
        return ModelCheckpoint(tmp / "w.safetensors", save_weights_only=True)
    return ModelCheckpoint(tmp / "runs" / "{epoch}" / "ckpt")


@pytest.mark.parametrize(("case", "kind", "words"), DESTINATIONS, ids=[d[0] for d in DESTINATIONS])
def test_unusable_destinations_fail_before_the_first_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, kind: str, words: str
) -> None:
    callback = _destination(kind, tmp_path, monkeypatch)
    before = snapshot(tmp_path)
    steps, counter = _step_counter()
    ft = tuner()
    start = weights(ft)
    with pytest.raises(CheckpointError, match=words):
        ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[counter, callback])
    assert steps == [] and same(weights(ft), start)
    after = snapshot(tmp_path)
    assert all(after.get(k) == v for k, v in before.items())  # nothing of the user's lost or changed
