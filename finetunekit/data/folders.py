"""Reading an ImageFolder-layout directory: ``root/<class name>/**/<image file>``.

Our own scan (not torchvision's ImageFolder) so that hidden folders such as ``.ipynb_checkpoints`` or
``.DS_Store`` files are skipped and every failure names the path and the layout expected.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from finetunekit.errors import DataError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif"}
)
_LAYOUT = "expected one subfolder per class, e.g. {root}/cat/1.jpg and {root}/dog/2.jpg"


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


def check_image_files(files: list[Path], what: str) -> None:
    """Open every file's header (PIL's ``verify``: no pixel decoding), so a corrupt or mislabelled file
    fails now, naming the file, rather than in the middle of an epoch hours later."""
    from PIL import Image

    bad: list[str] = []
    for path in files:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as exc:  # PIL raises many types for broken files
            bad.append(f"{path} ({type(exc).__name__})")
    if bad:
        raise DataError(
            f"{what} has {len(bad)} image file(s) that cannot be read: {'; '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}. Expected readable images; remove or replace these files."
        )


def scan_folder(root: Path, num_classes: int | None, what: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """(files, int64 labels, class names) of an ImageFolder directory; classes are sorted names."""
    layout = _LAYOUT.format(root=root)
    if not root.is_dir():
        state = "is a file" if root.exists() else "does not exist"
        raise DataError(f"{what}={str(root)!r} {state}; expected a folder of images ({layout}).")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and _visible(p)), key=lambda p: p.name)
    if not class_dirs:
        raise DataError(f"{what}={str(root)!r} has no class subfolders; {layout}.")
    files: list[Path] = []
    labels: list[int] = []
    for index, folder in enumerate(class_dirs):
        found = _class_files(folder)
        files += found
        labels += [index] * len(found)
    if not files:
        raise DataError(
            f"{what}={str(root)!r} has class subfolders but no image files "
            f"({', '.join(sorted(IMAGE_EXTENSIONS))}); {layout}."
        )
    check_image_files(files, what)
    names = [p.name for p in class_dirs]
    if num_classes is not None and len(names) > num_classes:
        raise DataError(
            f"{what}={str(root)!r} has {len(names)} class subfolders {names[:10]} but "
            f"num_classes={num_classes}; build the FineTuner with num_classes={len(names)} "
            "or remove the extra folders."
        )
    return files, np.asarray(labels, dtype=np.int64), names
