"""Low-level file rules every model folder follows: safe names, bounded reads, locks, stale temp files.

Why each rule exists:

- A manifest is data anyone can edit (and recompute checksums for), so the names it lists are checked
  to be plain file names inside the folder: no ``/``, no ``..``, no absolute paths, and the file itself
  must be a regular file (not a symlink that points out, a device, a FIFO that blocks, ``/proc``).
- Sizes are compared with ``stat`` before a byte is read, and hashing reads in 1 MiB chunks, so a
  huge file cannot exhaust memory before it is found wrong.
- Writers hold an ``flock`` while a temporary file or staging folder is in use. A later save can then
  prove that a leftover temp file belongs to a writer that died (its lock is free) and remove it,
  while a concurrent writer's files (lock held) are left alone. Locks die with their process, so a
  ``kill -9`` never leaves a lock held.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from finetunekit.errors import CheckpointError

try:  # POSIX; elsewhere saves still are atomic, only concurrent writers are not serialized
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

CHUNK = 1 << 20
MAX_JSON_BYTES = 64 << 20  # config.json / training.json: a few kB in practice
SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
_KINDS = {
    stat.S_ISDIR: "folder",
    stat.S_ISLNK: "symbolic link",
    stat.S_ISFIFO: "FIFO",
    stat.S_ISSOCK: "socket",
    stat.S_ISCHR: "character device",
    stat.S_ISBLK: "block device",
}


def check_name(name: object, manifest: Path) -> str:
    """``name`` if it is a plain file name (letters, digits, ``_ - .``, not starting with a dot)."""
    if not isinstance(name, str) or not SAFE_NAME.match(name) or ".." in name:
        raise CheckpointError(
            f"{str(manifest)!r} lists the file name {str(name)[:80]!r}; expected a plain file name inside "
            "the folder (letters, digits, '_', '-', '.'; no '/', '..', absolute paths or leading dots). "
            "The manifest was altered, so nothing in this folder is loaded."
        )
    return name


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS.items() if test(mode)), "special file")


def regular_file_size(path: Path) -> int:
    """The size of ``path``, which must be a regular file itself (a symlink is refused, not followed)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError as e:
        raise CheckpointError(
            f"{str(path)!r} is listed in the manifest but missing; the folder is broken."
        ) from e
    except OSError as e:
        raise CheckpointError(f"{str(path)!r} cannot be inspected ({e.strerror or e}).") from e
    if not stat.S_ISREG(info.st_mode):
        raise CheckpointError(
            f"{str(path)!r} is a {_kind(info.st_mode)}, not a plain file; expected the files of a save to "
            "be regular files inside its folder. It is not followed or read."
        )
    return info.st_size


@contextmanager
def _open_regular(path: Path, size: int) -> Iterator[IO[bytes]]:
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    flags |= getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise CheckpointError(f"{str(path)!r} cannot be opened ({e.strerror or e}).") from e
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_size != size:
            raise CheckpointError(f"{str(path)!r} changed while it was read; load it again.")
        yield f


def sha256_file(f: IO[bytes]) -> str:
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(CHUNK), b""):
        digest.update(block)
    return digest.hexdigest()


def read_checked(path: Path, size: int, sha: str, limit: int | None = None) -> bytes:
    """The bytes of ``path`` once its size (by ``stat``) and sha256 (in chunks) match; else a
    CheckpointError naming the file. ``limit``: most bytes accepted at all (for JSON files)."""
    actual = regular_file_size(path)
    if actual != size or (limit is not None and actual > limit):
        expected = f"{size} bytes" if limit is None or size <= limit else f"at most {limit} bytes"
        raise CheckpointError(
            f"{str(path)!r} is corrupt: {actual} bytes, expected {expected} (truncated, replaced or "
            "altered after writing). Nothing was read from it. Use an earlier checkpoint or save again."
        )
    with _open_regular(path, size) as f:
        digest = sha256_file(f)
        if digest != sha:
            raise CheckpointError(
                f"{str(path)!r} is corrupt: sha256 {digest[:12]}..., expected {sha[:12]}... (altered "
                "after writing, e.g. a flipped byte). Use an earlier checkpoint or save again."
            )
        f.seek(0)
        data = f.read(size + 1)
    if len(data) != size:
        raise CheckpointError(f"{str(path)!r} changed while it was read; load it again.")
    return data


def read_small(path: Path, limit: int) -> bytes:
    """A small regular file (a manifest, or a JSON file loaded with ``verify=False``), at most ``limit``."""
    size = regular_file_size(path)
    if size > limit:
        raise CheckpointError(
            f"{str(path)!r} is {size} bytes; expected at most {limit} for this kind of file. It is not read."
        )
    with _open_regular(path, size) as f:
        return f.read(limit + 1)


# -- locks -----------------------------------------------------------------------------------------
def try_lock(fd: int) -> bool:
    """Take an exclusive flock on ``fd`` without waiting; True when it was free."""
    if fcntl is None:  # pragma: no cover - Windows
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def hold_lock(fd: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)


@contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
    """Serialize writers of one destination across processes; the lock file is removed afterwards.

    The inode check makes removing it safe: a writer that locked a file another one already unlinked
    sees that the path no longer names its file, and retries on the new one."""
    while True:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            hold_lock(fd)
            same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
        except FileNotFoundError:
            same = False
        except BaseException:
            os.close(fd)
            raise
        if same or fcntl is None:
            break
        os.close(fd)
    try:
        yield
    finally:
        with suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)


def is_abandoned(path: Path) -> bool:
    """True when nobody holds the lock of the temp file ``path`` (its writer finished or died)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return try_lock(fd)
    finally:
        os.close(fd)


# -- atomic single files ----------------------------------------------------------------------------
def temp_pattern(name: str) -> re.Pattern[str]:
    return re.compile(rf"^\.{re.escape(name)}\.[A-Za-z0-9_]+\.tmp$")


def remove_stale_temps(folder: Path, name: str) -> list[Path]:
    """Remove ``.<name>.*.tmp`` files of killed writes in ``folder``; a live writer's are kept."""
    pattern, removed = temp_pattern(name), list[Path]()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        if pattern.match(p.name) and p.is_file() and not p.is_symlink() and is_abandoned(p):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` through a locked temp file, fsynced then renamed: a kill leaves the old
    file or the new one; the temp file of a killed write is removed by the next write to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path.parent / f".{path.name}.lock"):  # no cleaner sees the temp file unlocked
        remove_stale_temps(path.parent, path.name)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        hold_lock(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a cleaner never sees an unlocked live temp file
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: the directory entry itself must reach the disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def probe_writable(folder: Path, what: str, need_bytes: int = 0) -> None:
    """Raise CheckpointError now, before the first training step, when ``folder`` cannot take a save:
    it is a file, cannot be created, is read-only, or has less free space than ``need_bytes``."""
    fix = f"Fix: point {what} at a writable folder with free space."
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{what}: {str(folder)!r} is a file; expected a folder for the saves. {fix}")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".finetunekit-probe.", suffix=".tmp")
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(tmp)
        free = shutil.disk_usage(folder).free
    except OSError as e:
        raise CheckpointError(
            f"{what}: cannot write to {str(folder)!r} ({e.strerror or e}); checked before the first "
            f"training step, so nothing was trained in vain. {fix}"
        ) from e
    if free < need_bytes:
        raise CheckpointError(
            f"{what}: {str(folder)!r} has {free / 2**20:.1f} MiB free but one save needs about "
            f"{need_bytes / 2**20:.1f} MiB; checked before the first training step. {fix}"
        )
