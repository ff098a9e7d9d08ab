"""Image files as users hold them: lists of paths with labels, CSV files and pandas DataFrames
(fastai's ``ImageDataLoaders.from_df`` / ``from_csv``), one file, a flat folder of new photos.

:func:`from_csv` / :func:`from_df` return :class:`ImageFiles` (or a (train, valid) pair with
``valid_col``) that ``fit``, ``evaluate`` and ``predict`` take as ``x``. Class names are the sorted
unique labels of the whole table, so a training and a validation part always agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetunekit.data.folders import IMAGE_EXTENSIONS, check_image_files
from finetunekit.errors import DataError, MissingDependencyError


@dataclass
class ImageFiles:
    """Image paths with optional labels: int class indices (N,), or per-image class lists when
    ``multi_label``; ``class_names`` maps indices to the names the table used."""

    paths: list[Path]
    labels: list[Any] | None = None
    class_names: list[str] | None = None
    multi_label: bool = False

    def __len__(self) -> int:
        return len(self.paths)


def is_path_list(x: Any) -> bool:
    """A non-empty list/tuple whose items are all str or PathLike."""
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(isinstance(p, (str, os.PathLike)) for p in x)


def check_files(paths: Sequence[str | os.PathLike[str]], what: str) -> list[Path]:
    """Paths as Path objects; a missing file or one that is not an image names itself."""
    files = [Path(p) for p in paths]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DataError(
            f"{what} names {len(missing)} file(s) that do not exist: {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}. Expected paths of image files (relative paths are read "
            "from the current directory; from_csv(..., folder=) sets their root)."
        )
    check_image_files(files, what)
    return files


def flat_folder_files(root: Path) -> list[Path]:
    """Image files directly inside ``root``, sorted by name: what ``predict`` reads from a flat folder."""
    return sorted(
        p
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _split_cell(cell: Any, delimiter: str | None) -> list[str]:
    if delimiter is None:
        return [str(cell)]
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []  # an empty cell: an image with none of the classes
    return [part for part in str(cell).split(delimiter) if part != ""]


def _vocab(cells: list[list[str]]) -> list[str]:
    """Sorted class names; ints sort as numbers ("2" before "10")."""
    names = {name for row in cells for name in row}
    numeric = all(n.lstrip("-").isdigit() for n in names)
    return sorted(names, key=lambda n: (int(n) if numeric else 0, n))


def from_paths(
    paths: Sequence[str | os.PathLike[str]],
    labels: Sequence[Any] | None = None,
    *,
    classes: Sequence[str] | None = None,
    delimiter: str | None = None,
    what: str = "paths",
) -> ImageFiles:
    """Paths with labels given as class names or ints; ``delimiter`` splits each label into several
    classes (multi-label, e.g. ``"cat dog"`` with ``delimiter=" "``)."""
    files = check_files(paths, what)
    if labels is None:
        return ImageFiles(files)
    if len(labels) != len(files):
        raise DataError(
            f"{what} has {len(files)} files but {len(labels)} labels; expected one label per file."
        )
    cells = [_split_cell(c, delimiter) for c in labels]
    names = list(classes) if classes is not None else _vocab(cells)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for row in cells for n in row} - set(index))
    if unknown:
        raise DataError(f"{what} has labels {unknown[:5]} that are not in classes={names[:10]}; add them.")
    rows = [[index[n] for n in row] for row in cells]
    if delimiter is not None:
        return ImageFiles(files, rows, names, multi_label=True)
    return ImageFiles(files, [r[0] for r in rows], names)


def _column(frame: Any, col: str, role: str) -> Any:
    if col not in frame.columns:
        raise DataError(
            f"{role}={col!r} is not a column of the table; its columns are {list(frame.columns)[:10]}. "
            f"Pass {role}= one of them."
        )
    return frame[col]


def _valid_mask(frame: Any, valid_col: str) -> np.ndarray:
    mask = _column(frame, valid_col, "valid_col").to_numpy()
    if mask.dtype != np.bool_:
        try:
            mask = mask.astype(str)
            mask = np.isin(np.char.lower(mask), ("1", "true", "yes", "valid"))
        except (TypeError, ValueError) as exc:
            raise DataError(f"valid_col={valid_col!r} must hold booleans (True = validation row).") from exc
    if mask.all() or not mask.any():
        raise DataError(
            f"valid_col={valid_col!r} marks {int(mask.sum())} of {len(mask)} rows as validation; expected "
            "some rows for training and some for validation."
        )
    return mask


def from_df(
    df: Any,
    path_col: str = "path",
    label_col: str | None = "label",
    valid_col: str | None = None,
    delimiter: str | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> ImageFiles | tuple[ImageFiles, ImageFiles]:
    """Images listed in a pandas DataFrame. ``folder`` prefixes relative paths; ``valid_col`` (a bool
    column, fastai's ``is_valid``) returns ``(train, valid)``; ``delimiter`` makes labels multi-label."""
    root = Path(folder) if folder is not None else None
    paths = [root / str(p) if root is not None else Path(str(p)) for p in _column(df, path_col, "path_col")]
    labels = list(_column(df, label_col, "label_col")) if label_col is not None else None
    if labels is None:
        return from_paths(paths, None, what=f"the {path_col!r} column")
    classes = _vocab([_split_cell(c, delimiter) for c in labels])
    what = f"the {path_col!r} column"
    if valid_col is None:
        return from_paths(paths, labels, classes=classes, delimiter=delimiter, what=what)
    mask = _valid_mask(df, valid_col)
    parts = []
    for keep in (~mask, mask):
        rows = np.flatnonzero(keep)
        parts.append(from_paths([paths[i] for i in rows], [labels[i] for i in rows], classes=classes,
                                delimiter=delimiter, what=what))  # fmt: skip
    return parts[0], parts[1]


def from_csv(
    path: str | os.PathLike[str],
    path_col: str = "path",
    label_col: str | None = "label",
    valid_col: str | None = None,
    delimiter: str | None = None,
    folder: str | os.PathLike[str] | None = None,
) -> ImageFiles | tuple[ImageFiles, ImageFiles]:
    """:func:`from_df` on a CSV file; relative image paths are read from the CSV's folder unless
    ``folder`` says otherwise (fastai reads them from ``path`` the same way)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise MissingDependencyError("from_csv needs pandas: pip install pandas") from exc
    csv = Path(path)
    if not csv.is_file():
        raise DataError(f"from_csv: {str(csv)!r} is not a file; expected a CSV of image paths and labels.")
    frame = pd.read_csv(csv)
    return from_df(
        frame, path_col, label_col, valid_col, delimiter, folder if folder is not None else csv.parent
    )


def with_paths(rows: Any, data: Any, return_paths: bool) -> Any:
    """``predict``'s answer: the rows, or ``(rows, file names)`` when asked and the data is files."""
    if not return_paths:
        return rows
    if data.files is None:
        raise DataError(
            "predict(return_paths=True) needs image files (a file, a folder, a list of paths or from_csv); "
            "this input has no file names. Leave return_paths False."
        )
    return rows, list(data.files)
