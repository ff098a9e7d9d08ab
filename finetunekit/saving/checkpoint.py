"""Model folders and checkpoints: one writer (staging + manifest + atomic swap), verified reads.

Every folder finetunekit writes (``ft.save()``, ModelCheckpoint, BackupAndRestore) holds the files of
``ft.save()`` (``model.safetensors`` + ``config.json``), optionally the training state
(``training.safetensors`` + ``training.json``) and ``manifest.json``, written last, with the size and
sha256 of every file. A folder without a valid manifest is incomplete by definition, and a file whose
checksum disagrees is corrupt, so both are named instead of loaded.

Writing never touches the previous folder until the new one is complete: files go into a staging
folder next to the target (``.<name>.partial-<id>``, locked by its writer), the manifest last; then,
holding the destination's lock, the old folder is renamed to ``<name>.previous``, the staging folder
to ``<name>``, and the previous one is removed. A kill at any instant leaves the old save or the new
one (``<name>.previous`` when it struck between the renames, see :func:`resolve`). Two processes
saving to one place take turns at the swap, so the last one wins with a complete save. The next save
to a place removes what killed saves left there (staging folders, ``.tmp`` files, half-deleted
previous copies), but never a live writer's files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from finetunekit.errors import CheckpointError
from finetunekit.saving import files as fs
from finetunekit.saving.files import atomic_write_bytes, fsync_dir

MANIFEST = "manifest.json"
FORMAT = "finetunekit-checkpoint"
FORMAT_VERSION = 1
PREVIOUS_SUFFIX = ".previous"
KNOWN_FILES = frozenset(
    {"model.safetensors", "config.json", "training.safetensors", "training.json", MANIFEST}
)
MAX_MANIFEST_BYTES = 1 << 20
_WRITING = ".finetunekit-writing"  # inside a staging folder while its writer is alive (locked)
_SHA = re.compile(r"^[0-9a-f]{64}$")


def sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def manifest_bytes(files: Mapping[str, bytes], meta: Mapping[str, Any]) -> bytes:
    entries = {name: {"sha256": sha256(data), "bytes": len(data)} for name, data in files.items()}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "files": entries, **meta}
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def _write_error(folder: Path, e: OSError) -> CheckpointError:
    return CheckpointError(
        f"could not write the checkpoint {str(folder)!r}: {e.strerror or e}. Expected a writable folder "
        "with free space; fix the permissions or free disk space (or choose another folder). The "
        "previous checkpoint there, if any, is intact."
    )


def write_checkpoint(
    folder: str | os.PathLike[str], files: Mapping[str, bytes], meta: Mapping[str, Any]
) -> None:
    """Write ``files`` (name -> bytes) and their manifest as the folder ``folder``, atomically.

    Raises :class:`CheckpointError` on a full disk, a read-only folder, a destination that is a file
    or a folder holding anything but a finetunekit save; the previous save at ``folder`` is then left
    exactly as it was."""
    folder = Path(folder)
    for name in files:
        fs.check_name(name, Path(MANIFEST))
    if "config.json" in files:  # a save must never produce a folder that its load would refuse
        from finetunekit.saving.model_folder import parse_config

        parse_config(files["config.json"], "the config to be saved (config.json)")
    staging = folder.parent / f".{folder.name}.partial-{uuid.uuid4().hex[:8]}"
    lock = lock_path(folder)
    marker_fd: int | None = None
    try:
        check_replaceable(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        with fs.exclusive(lock):  # cleaners hold it too: none sees the staging folder before it is locked
            staging.mkdir()
            marker_fd = os.open(staging / _WRITING, os.O_RDWR | os.O_CREAT, 0o644)
            fs.hold_lock(marker_fd)
        for name, data in files.items():
            atomic_write_bytes(staging / name, data)
        atomic_write_bytes(staging / MANIFEST, manifest_bytes(files, meta))
        with fs.exclusive(lock):
            remove_leftovers(folder)
            check_replaceable(folder)  # again: another process may have created it meanwhile
            os.unlink(staging / _WRITING)
            _move_into_place(staging, folder)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        raise _write_error(folder, e) from e
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        if marker_fd is not None:
            os.close(marker_fd)


def lock_path(folder: Path) -> Path:
    """The lock every writer and cleaner of ``folder`` holds while it creates, swaps or removes."""
    return folder.parent / f".{folder.name}.lock"


def check_replaceable(folder: Path) -> None:
    """A save may replace ``folder`` only when it is absent, empty or a finetunekit save: anything
    else there (a file, a user's folder of other things) is refused rather than moved away."""
    if folder.name in ("", ".", ".."):
        raise CheckpointError(
            f"save path {str(folder)!r} names no folder of its own; expected a path such as 'runs/my_model'."
        )
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise CheckpointError(
            f"save path {str(folder)!r} is a file or a link; expected a folder path, e.g. 'runs/my_model'. "
            "Choose another path; the file was not touched."
        )
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not _ours(p))
    if foreign:
        raise CheckpointError(
            f"save path {str(folder)!r} holds files that are not part of a finetunekit save "
            f"({', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}); a save replaces the whole "
            "folder, so they would be lost. Choose a new or empty folder, or move those files out."
        )


def _ours(p: Path) -> bool:
    if p.name in KNOWN_FILES or p.name == _WRITING:
        return p.is_file() and not p.is_symlink()
    return any(fs.temp_pattern(name).match(p.name) for name in KNOWN_FILES)


def _trash(path: Path) -> None:
    """Remove a folder by renaming it to a hidden trash name first, so a kill mid-delete never leaves
    a half-deleted folder under a name a load would use."""
    if not path.exists():
        return
    trash = path.parent / f".{path.name}.trash-{uuid.uuid4().hex[:8]}"
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """What killed writes to ``folder`` left next to it (called holding its lock): staging folders
    whose writer is dead, trash folders, and a ``.previous`` copy once ``folder`` itself is complete."""
    removed: list[Path] = []
    parent = folder.parent
    if not parent.is_dir():
        return removed
    partial = re.compile(rf"^\.{re.escape(folder.name)}(\.previous)?\.(partial|trash)-[0-9a-f]{{8}}$")
    for p in list(parent.iterdir()):
        if partial.match(p.name) and p.is_dir() and not p.is_symlink() and abandoned(p):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    fs.remove_stale_temps(parent, folder.name)
    previous = folder.with_name(folder.name + PREVIOUS_SUFFIX)
    if folder.is_dir() and previous.is_dir() and not previous.is_symlink():
        _trash(previous)
        removed.append(previous)
    return removed


def abandoned(staging: Path) -> bool:
    """A staging or trash folder is abandoned when its writer's lock is free, or (killed before it took
    the lock) when it holds nothing but our own files."""
    if ".trash-" in staging.name:
        return True  # trash only exists inside a writer's locked section
    marker = staging / _WRITING
    if marker.is_file():
        return fs.is_abandoned(marker)
    return all(_ours(p) for p in staging.iterdir())


def _move_into_place(staging: Path, folder: Path) -> None:
    """Rename the finished staging folder to ``folder``; an existing one is kept as ``.previous`` until
    the rename succeeded, so a kill in between leaves a loadable copy (see :func:`resolve`)."""
    previous = folder.with_name(folder.name + PREVIOUS_SUFFIX)
    if folder.exists():
        _trash(previous)
        os.replace(folder, previous)
    os.replace(staging, folder)
    fsync_dir(folder.parent)
    _trash(previous)


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


def _manifest_error(path: Path, problem: str) -> CheckpointError:
    return CheckpointError(
        f"{str(path)!r} {problem}; the checkpoint is corrupt or was not written by finetunekit, so nothing "
        "in it is loaded. Use an earlier checkpoint or save again."
    )


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``, with every entry checked (safe name, integer size, sha256 hex)."""
    path = folder / MANIFEST
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"checkpoint {str(folder)!r} {state}; expected a folder written by ft.save(), ModelCheckpoint "
            "or BackupAndRestore, holding config.json, model.safetensors and manifest.json. Check the path."
        )
    if not path.exists() and not path.is_symlink():
        raise CheckpointError(
            f"{str(path)!r} is missing, so {str(folder)!r} is incomplete (its write was interrupted, or an "
            "older tool wrote it); expected a manifest.json written last. Use an earlier checkpoint, or, "
            "if you trust the files, load it unverified with FineTuner.load(path, verify=False)."
        )
    data = fs.read_small(path, MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise _manifest_error(path, f"is not valid JSON ({type(e).__name__})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _manifest_error(path, f"is not a finetunekit checkpoint manifest (format={FORMAT!r})")
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _manifest_error(path, f"has format_version={version!r}; expected an int >= 1")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has format_version {version}; this finetunekit reads up to "
            f"{FORMAT_VERSION}. Upgrade finetunekit to load it (it was left untouched)."
        )
    _check_entries(manifest.get("files"), path)
    return manifest


def _check_entries(entries: Any, path: Path) -> None:
    if not isinstance(entries, dict) or not entries:
        raise _manifest_error(path, "lists no files (key 'files'); expected name -> {sha256, bytes}")
    for name, entry in entries.items():
        fs.check_name(name, path)
        size = entry.get("bytes") if isinstance(entry, dict) else None
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise _manifest_error(path, f"gives files[{name!r}].bytes={size!r}; expected an int >= 0")
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise _manifest_error(path, f"gives files[{name!r}].sha256={str(sha)[:80]!r}; expected 64 hex")
        if name == MANIFEST:
            raise _manifest_error(path, "lists itself")


def read_checkpoint(
    folder: str | os.PathLike[str], required: tuple[str, ...] = ()
) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The verified files of a checkpoint and its manifest; a missing, truncated, altered or unsafe file
    raises :class:`CheckpointError` naming its path. ``required``: names the manifest must list. Nothing
    is deserialized before its checksum matched."""
    folder = resolve(folder)
    manifest = read_manifest(folder)
    listed: dict[str, dict[str, Any]] = manifest["files"]
    missing = [name for name in required if name not in listed]
    if missing:
        raise _manifest_error(folder / MANIFEST, f"does not list {missing}, which this folder needs")
    files: dict[str, bytes] = {}
    for name, entry in listed.items():
        limit = fs.MAX_JSON_BYTES if name.endswith(".json") else None
        files[name] = fs.read_checked(folder / name, entry["bytes"], entry["sha256"], limit)
    return files, manifest


def verify(folder: str | os.PathLike[str]) -> None:
    """Raise :class:`CheckpointError` unless ``folder`` is a complete, uncorrupted checkpoint."""
    read_checkpoint(folder)
