"""Checkpoint files: corruption is detected and named, resume falls back to the last good backup, writes
are atomic (a failed or interrupted write leaves the previous checkpoint loadable), nothing is unpickled."""

from __future__ import annotations

import errno
import json
import os
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images, on_global_step

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, ModelCheckpoint
from finetunekit.errors import CheckpointError
from finetunekit.saving import checkpoint, flat_state
from finetunekit.strategies import DiscriminativeLR

X, Y = make_images(48, 3, 16, seed=1)


def tuner(**kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0, **kw)


def weights(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ft.model.state_dict().items()}


@pytest.fixture
def full_checkpoint(tmp_path: Path) -> Path:
    ft = tuner()
    ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[ModelCheckpoint(tmp_path / "ckpt")])
    return tmp_path / "ckpt"


@pytest.mark.parametrize(
    "name", ["model.safetensors", "training.safetensors", "training.json", "config.json"]
)
@pytest.mark.parametrize("keep", [0, 7, 0.5, -1])
def test_truncation_anywhere_is_detected_and_named(full_checkpoint: Path, name: str, keep: float) -> None:
    path = full_checkpoint / name
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt") as info:
        checkpoint.verify(full_checkpoint)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["model.safetensors", "training.safetensors", "training.json"])
def test_a_flipped_byte_is_detected(full_checkpoint: Path, name: str) -> None:
    path = full_checkpoint / name
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0x01  # inside tensor data or a JSON number: still parses, wrong values
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.verify(full_checkpoint)
    with pytest.raises(CheckpointError):
        FineTuner.load(full_checkpoint, model=TinyNet(num_classes=3))


def test_missing_manifest_means_incomplete(full_checkpoint: Path) -> None:
    (full_checkpoint / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        checkpoint.verify(full_checkpoint)


def test_pickle_payload_with_matching_checksums_is_never_executed(
    tmp_path: Path, full_checkpoint: Path
) -> None:
    class Payload:
        def __reduce__(self) -> Any:
            return (open, (str(tmp_path / "pwned"), "w"))

    evil = pickle.dumps(Payload())
    (full_checkpoint / "training.safetensors").write_bytes(evil)
    manifest = json.loads((full_checkpoint / "manifest.json").read_text())
    manifest["files"]["training.safetensors"] = {"sha256": checkpoint.sha256(evil), "bytes": len(evil)}
    (full_checkpoint / "manifest.json").write_text(json.dumps(manifest))  # an attacker fixes the checksum
    (tmp_path / "bk").mkdir()
    os.replace(full_checkpoint, tmp_path / "bk" / "ckpt-e000001-s0000000")
    ft = tuner()
    before = weights(ft)
    with pytest.raises(CheckpointError, match="never unpickles") as info:
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=[BackupAndRestore(tmp_path / "bk")])
    assert "training.safetensors" in str(info.value)
    assert not (tmp_path / "pwned").exists()
    assert all(torch.equal(before[k], v) for k, v in weights(ft).items())  # nothing was loaded


class Crash(Exception):
    pass


def crash_at(ft: FineTuner, global_step: int) -> Any:
    def on_step(step: int) -> None:
        if step == global_step:
            raise Crash

    return on_global_step(on_step)


def run(backup: Path, crash: int | None = None, **fit_kw: Any) -> dict[str, torch.Tensor] | None:
    ft = tuner(strategy=DiscriminativeLR(0.5))
    cbs: list[Any] = [BackupAndRestore(backup, save_freq=2)]
    if crash is not None:
        cbs.append(crash_at(ft, crash))
    try:
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=cbs, **fit_kw)
    except Crash:
        return None
    return weights(ft)


def test_resume_falls_back_to_the_previous_backup_when_the_newest_is_corrupt(tmp_path: Path) -> None:
    reference = run(tmp_path / "ref")
    assert run(tmp_path / "bk", crash=8) is None
    newest, _previous = BackupAndRestore(tmp_path / "bk").checkpoints()
    data = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(data[:100])
    with pytest.warns(RuntimeWarning, match="skipping a bad backup .kept as"):
        resumed = run(tmp_path / "bk")
    assert resumed is not None and reference is not None
    assert not newest.exists()  # set aside for inspection, not deleted
    assert [p for p in (tmp_path / "bk").iterdir() if p.name.startswith(newest.name + ".corrupt-")]
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_full_disk_is_a_clear_error_and_the_previous_backup_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(tmp_path / "bk", crash=5) is None
    before = BackupAndRestore(tmp_path / "bk").checkpoints()
    real = checkpoint.atomic_write_bytes

    def full_disk(path: Any, data: bytes) -> None:
        if Path(path).name == "training.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device") as info:
        run(tmp_path / "bk")
    assert "intact" in str(info.value)
    assert BackupAndRestore(tmp_path / "bk").checkpoints() == before
    for folder in before:
        checkpoint.verify(folder)
    assert not [p for p in (tmp_path / "bk").iterdir() if ".partial-" in p.name]


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_folder_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CheckpointError, match="could not write"):
            run(folder)
    finally:
        folder.chmod(0o700)


def test_a_kill_between_the_renames_of_a_rewrite_leaves_the_previous_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ft = tuner()
    target = tmp_path / "best"
    ft.fit(
        X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[ModelCheckpoint(target, save_weights_only=True)]
    )
    saved = weights(ft)
    calls = {"n": 0}
    real_replace = os.replace

    def interrupted(src: Any, dst: Any) -> None:
        calls["n"] += 1
        if Path(dst) == target and Path(src).name.startswith(".best.partial-"):
            raise KeyboardInterrupt  # the process dies after moving the old one aside
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ft.fit(
            X,
            Y,
            batch_size=8,
            epochs=1,
            verbose=0,
            callbacks=[ModelCheckpoint(target, save_weights_only=True)],
        )
    monkeypatch.undo()
    assert not target.exists()
    with pytest.warns(RuntimeWarning, match="interrupted"):
        loaded = FineTuner.load(target, model=TinyNet(num_classes=3))
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())


def test_optimizer_state_round_trips_by_name_without_pickle() -> None:
    ft = tuner()
    ft.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    assert ft.optimizer is not None
    tensors, meta = flat_state.optimizer_state(ft.optimizer, ft.model)
    assert tensors and all(k.startswith("optim.") for k in tensors)
    assert {k.rsplit(".", 1)[1] for k in tensors} == {"step", "exp_avg", "exp_avg_sq"}
    json.dumps(meta)  # plain JSON
    other = tuner()
    other.compile()
    assert other.optimizer is not None
    flat_state.load_optimizer_state(other.optimizer, other.model, tensors, meta)
    a, b = ft.optimizer.state_dict(), other.optimizer.state_dict()
    for i, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][i][key])
    sgd = tuner()
    sgd.compile(optimizer="sgd")
    assert sgd.optimizer is not None
    with pytest.raises(CheckpointError, match="AdamW"):
        flat_state.load_optimizer_state(sgd.optimizer, sgd.model, tensors, meta)
