"""What lives next to saves: telling one's own folders from others', removing only provably abandoned
leftovers, and probing a destination before training.

BackupAndRestore shares its folder with whatever the user keeps there, so it removes a backup only when
the manifest says BackupAndRestore wrote it (:func:`written_by`), a staging folder only when its
writer's lock is free (:func:`remove_abandoned_staging`), and a backup of a newer finetunekit never
(:func:`newer_format`). Both checkpointing callbacks call :func:`probe_destination` at train begin, so a
read-only, full or file-typed destination fails before the first step instead of at the first save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from finetunekit.errors import CheckpointError
from finetunekit.saving import files as fs
from finetunekit.saving.checkpoint import (
    FORMAT_VERSION,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    abandoned,
    check_replaceable,
    lock_path,
    read_manifest,
)


def written_by(folder: Path, writer: str) -> bool:
    """True when ``folder``'s manifest is one this finetunekit can read and says ``writer`` wrote it:
    what lets BackupAndRestore tell its own backups from anything else in its folder."""
    try:
        manifest = read_manifest(folder)
    except CheckpointError:
        return False
    return manifest.get("writer") == writer


def newer_format(folder: Path) -> int | None:
    """The manifest's format_version when it is newer than this finetunekit reads, else None: such a
    folder is valid for another version, so it is neither used nor removed."""
    try:
        manifest = json.loads(fs.read_small(folder / MANIFEST, MAX_MANIFEST_BYTES))
    except (CheckpointError, ValueError, RecursionError):
        return None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        return version
    return None


def remove_abandoned_staging(parent: Path, prefix: str) -> list[Path]:
    """Staging and trash folders of killed writes to ``parent/<prefix>*``: only those whose writer is
    provably gone (its lock is free, or it died before writing anything but our files)."""
    pattern = re.compile(rf"^\.({re.escape(prefix)}[^/]*?)(\.previous)?\.(partial|trash)-[0-9a-f]{{8}}$")
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in list(parent.iterdir()):
        match = pattern.match(p.name)
        if match is None or not p.is_dir() or p.is_symlink():
            continue
        with fs.exclusive(lock_path(parent / match.group(1))):  # as the writers of that folder do
            if abandoned(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def probe_destination(
    filepath: str | os.PathLike[str], what: str, need_bytes: int, single_file: bool
) -> None:
    """Check at train begin that saves to ``filepath`` (which may hold ``{placeholders}``) can succeed:
    the folder they go to is writable with room for one save, and a fixed target is replaceable."""
    path = Path(filepath)
    first = next((i for i, part in enumerate(path.parts) if "{" in part), len(path.parts) - 1)
    root = Path(*path.parts[:first]) if first else Path(".")
    fs.probe_writable(root, what, need_bytes)
    if "{" in str(filepath):
        return
    if single_file and path.is_dir():
        raise CheckpointError(
            f"{what}: {str(path)!r} is a folder; expected a file path ending in .safetensors."
        )
    if not single_file:
        check_replaceable(path)
