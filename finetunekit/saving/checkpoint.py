"""Checkpoint folders: written atomically, verified by checksums, never unpickled.

A checkpoint is a folder holding the files of ``ft.save()`` (``model.safetensors`` + ``config.json``, so
``FineTuner.load`` opens any checkpoint), optionally the training state (``training.safetensors`` for
tensors, ``training.json`` for the rest) and ``manifest.json``, written last, with the size and sha256
of every file. Why a manifest: a checkpoint without a valid manifest is incomplete by definition, and a
file whose checksum disagrees is corrupt (truncated by a full disk, a flipped byte), so both are
detected and named instead of loaded.

Writing never touches the previous checkpoint until the new one is complete: files go into a staging
folder next to the target (each one written to a temporary file, fsynced, renamed), the manifest last,
and only then the staging folder is renamed into place. A kill at any instant leaves either the old
checkpoint or the new one, both loadable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetunekit.errors import CheckpointError
from finetunekit.saving.model_folder import atomic_write_bytes, fsync_dir

MANIFEST = "manifest.json"
FORMAT = "finetunekit-checkpoint"
FORMAT_VERSION = 1
PREVIOUS_SUFFIX = ".previous"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(files: Mapping[str, bytes], meta: Mapping[str, Any]) -> bytes:
    entries = {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": entries, **meta}
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def write_checkpoint(
    folder: str | os.PathLike[str], files: Mapping[str, bytes], meta: Mapping[str, Any]
) -> None:
    """Write ``files`` (name -> bytes) and their manifest as the checkpoint ``folder``, atomically.

    Raises :class:`CheckpointError` on a full disk, a read-only folder or any other OS error; the
    previous checkpoint at ``folder`` (if any) is then left exactly as it was.
    """
    folder = Path(folder)
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging.mkdir()
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_bytes(staging / MANIFEST, manifest_bytes(files, meta))
        _move_into_place(staging, folder)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(
            f"could not write the checkpoint {str(folder)!r}: {e.strerror or e}. Expected a writable folder "
            "with free space; fix the permissions or free disk space (or choose another folder). The "
            "previous checkpoint there, if any, is intact."
        ) from e


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished staging folder to ``folder``; an existing one is kept as ``.previous`` until
    the rename succeeded, so a kill in between leaves a loadable copy (see :func:`resolve`)."""
    previous = folder.with_name(folder.name + PREVIOUS_SUFFIX)
    if folder.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(folder, previous)
    os.replace(staging, folder)
    fsync_dir(folder.parent)
    shutil.rmtree(previous, ignore_errors=True)


def resolve(folder: str | os.PathLike[str]) -> Path:
    """``folder``, or its ``.previous`` copy when a kill struck between the two renames of a rewrite."""
    folder = Path(folder)
    previous = folder.with_name(folder.name + PREVIOUS_SUFFIX)
    if not folder.exists() and previous.is_dir():
        warnings.warn(
            f"checkpoint {str(folder)!r} is missing but {str(previous)!r} exists (a save was interrupted); "
            "loading the previous checkpoint.",
            RuntimeWarning,
            stacklevel=3,
        )
        return previous
    return folder


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"checkpoint {str(folder)!r} {state}; expected a checkpoint folder written by ModelCheckpoint, "
            "BackupAndRestore or ft.save(). Check the path."
        )
    if not path.is_file():
        raise CheckpointError(
            f"{str(path)!r} is missing, so checkpoint {str(folder)!r} is incomplete (its write was "
            "interrupted); expected a manifest.json written last. Use an earlier checkpoint."
        )
    try:
        manifest = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(path)!r} is not valid JSON ({e}); the checkpoint is corrupt.") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a finetunekit checkpoint manifest (format={FORMAT!r}).")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format_version {manifest.get('format_version')}; this finetunekit reads up "
            f"to {FORMAT_VERSION}. Upgrade finetunekit."
        )
    return manifest


def read_checkpoint(folder: str | os.PathLike[str]) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The verified files of a checkpoint and its manifest; a missing, truncated or altered file raises
    :class:`CheckpointError` naming its path. Nothing is deserialized before its checksum matched."""
    folder = resolve(folder)
    manifest = read_manifest(folder)
    files: dict[str, bytes] = {}
    for name, entry in dict(manifest.get("files", {})).items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(
                f"{str(path)!r} is listed in the manifest but missing; the checkpoint is broken."
            )
        data = path.read_bytes()
        if len(data) != entry.get("bytes") or sha256(data) != entry.get("sha256"):
            raise CheckpointError(
                f"{str(path)!r} is corrupt: {len(data)} bytes with sha256 {sha256(data)[:12]}..., expected "
                f"{entry.get('bytes')} bytes with sha256 {str(entry.get('sha256'))[:12]}... (truncated or "
                "altered after writing). Use an earlier checkpoint."
            )
        files[name] = data
    return files, manifest


def verify(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` is a complete, uncorrupted checkpoint."""
    read_checkpoint(folder)
