"""Shared by the tests in tests/saving: a tiny saved model and an attacker who edits files and then
recomputes the manifest's checksums (anyone can), so only the value checks stand in the way."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, LambdaCallback

X, Y = make_images(48, 3, 16, seed=1)


def tuner(**kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0, **kw)


def weights(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ft.model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(folder: Path) -> dict[str, Any]:
    """Every file under ``folder`` (recursively) by relative path: what 'nothing lost' compares (size
    and mtime for big files, which the tests make sparse, so the harness itself reads no gigabytes)."""

    def state(p: Path) -> Any:
        info = p.lstat()
        if p.is_symlink() or not p.is_file():
            return ("special", info.st_mode, os.readlink(p) if p.is_symlink() else None)
        return p.read_bytes() if info.st_size < 16 << 20 else (info.st_size, info.st_mtime_ns)

    return {str(p.relative_to(folder)): state(p) for p in sorted(folder.rglob("*"))}


def load(folder: Path, **kw: Any) -> FineTuner:
    return FineTuner.load(folder, model=TinyNet(num_classes=3), device="cpu", **kw)


def reseal(folder: Path) -> None:
    """Recompute size and sha256 of every file the manifest lists, as an attacker would."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    for name in manifest["files"]:
        target = folder / name
        if target.is_file() and not target.is_symlink():
            data = target.read_bytes()
            manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    path.write_text(json.dumps(manifest))


def edit_json(folder: Path, name: str, change: Callable[[dict[str, Any]], Any]) -> None:
    path = folder / name
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    reseal(folder)


def write_raw(folder: Path, name: str, text: str | bytes) -> None:
    path = folder / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    reseal(folder)


def edit_manifest(folder: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def entry(data: bytes) -> dict[str, Any]:
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


class Crash(Exception):
    pass


def interrupted_backup(root: Path, at: int = 5) -> Path:
    """A backup dir holding one mid-epoch backup of a fit that crashed at global step ``at``."""
    ft = tuner()

    def crash(batch: int, logs: dict[str, float]) -> None:
        if batch == at:
            raise Crash

    backup = root / "bk"
    callbacks = [BackupAndRestore(backup, save_freq=4), LambdaCallback(on_train_batch_end=crash)]
    with pytest.raises(Crash):
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks)
    (only,) = BackupAndRestore(backup).checkpoints()
    return only
