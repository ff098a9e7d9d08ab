"""Reading an ImageFolder-layout directory: ``root/<class name>/**/<image file>``.

Our own scan (not torchvision's ImageFolder) so that hidden folders such as ``.ipynb_checkpoints`` or
``.DS_Store`` files are skipped, every file is decoded once before training (:mod:`.images`), and every
failure names the path and the layout expected. Layouts that train but probably not as meant (fewer
class folders than ``num_classes``, an empty class folder) get one warning each rather than silence.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from finetunekit.data.images import check_files, check_policy
from finetunekit.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
_LAYOUT = "expected one subfolder per class, e.g. {root}/cat/1.jpg and {root}/dog/2.jpg"


class ImageFolder(os.PathLike[str]):
    """A folder of class subfolders with options; anywhere a folder path is accepted.

    ``on_bad_file="raise"`` (what a plain path does) stops before training when a file cannot be
    decoded, naming it; ``"skip"`` leaves such files out and names them in one warning.
    """

    def __init__(self, root: str | os.PathLike[str], on_bad_file: str = "raise") -> None:
        self.root = Path(root)
        self.on_bad_file = check_policy(on_bad_file)

    def __fspath__(self) -> str:
        return str(self.root)

    def __repr__(self) -> str:
        return f"ImageFolder({str(self.root)!r}, on_bad_file={self.on_bad_file!r})"


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def _class_files(folder: Path) -> list[Path]:
    """Image files under one class folder, recursively, skipping hidden files and folders, sorted so
    sample order (and so seeded splits) is the same on every filesystem."""
    files = []
    for path in folder.rglob("*"):
        relative = path.relative_to(folder).parts
        if path.suffix.lower() in IMAGE_EXTENSIONS and all(not p.startswith(".") for p in relative):
            files.append(path)
    return sorted(f for f in files if f.is_file())


def check_image_files(files: list[Path], what: str, on_bad_file: str = "raise") -> list[Path]:
    """Decode every file once (see :func:`finetunekit.data.images.check_files`); the usable files."""
    return check_files(files, what, on_bad_file)


def _warn_layout(root: Path, names: list[str], counts: list[int], num_classes: int | None, what: str) -> None:
    empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
    if empty:
        warnings.warn(
            f"{what}={str(root)!r}: class folder(s) {empty[:10]} hold no images; their labels exist but "
            "have no samples. Add images or remove the folders (keep them only to fix label numbers).",
            RuntimeWarning,
            stacklevel=5,
        )
    if num_classes is not None and len(names) < num_classes:
        warnings.warn(
            f"{what}={str(root)!r} has {len(names)} class subfolders {names[:10]} but num_classes="
            f"{num_classes}: labels {len(names)}..{num_classes - 1} never occur in it. Fine for a subset; "
            f"otherwise build the FineTuner with num_classes={len(names)}.",
            RuntimeWarning,
            stacklevel=5,
        )


def scan_folder(
    root: str | os.PathLike[str], num_classes: int | None, what: str
) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, int64 labels, class names) of an ImageFolder directory; classes are sorted names.
    ``root`` may be an :class:`ImageFolder` carrying the bad-file policy."""
    policy = root.on_bad_file if isinstance(root, ImageFolder) else "raise"
    root = Path(root)
    layout = _LAYOUT.format(root=root)
    if not root.is_dir():
        state = "is a file" if root.exists() else "does not exist"
        raise DataError(f"{what}={str(root)!r} {state}; expected a folder of images ({layout}).")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{what}={str(root)!r} has no class subfolders; {layout}.")
    names = [p.name for p in class_dirs]
    if num_classes is not None and len(names) > num_classes:
        raise DataError(
            f"{what}={str(root)!r} has {len(names)} class subfolders {names[:10]} but "
            f"num_classes={num_classes}; build the FineTuner with num_classes={len(names)} "
            "or remove the extra folders."
        )
    found = [_class_files(folder) for folder in class_dirs]
    if not any(found):
        raise DataError(
            f"{what}={str(root)!r} has class subfolders but no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); {layout}."
        )
    usable = set(check_image_files([f for group in found for f in group], what, policy))
    if not usable:
        raise DataError(f"{what}={str(root)!r}: none of its image files can be decoded; {layout}.")
    found = [[f for f in group if f in usable] for group in found]
    _warn_layout(root, names, [len(group) for group in found], num_classes, what)
    files = [f for group in found for f in group]
    labels = [index for index, group in enumerate(found) for _ in group]
    return files, np.asarray(labels, dtype=np.int64), names
