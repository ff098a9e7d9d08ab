"""The folder ``ft.save()`` writes: safetensors for tensors, JSON for config, no pickle.

It is written by the one writer of every model folder (:func:`finetunekit.saving.checkpoint.write_checkpoint`:
staging folder, manifest, atomic swap), so a kill mid-save leaves the previous save or the new one and
concurrent saves end with one complete save. Loading verifies every checksum before parsing and then
validates every config value (:mod:`finetunekit.saving.validate`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from finetunekit.errors import CheckpointError
from finetunekit.saving import checkpoint, validate
from finetunekit.saving import files as fs
from finetunekit.saving.files import atomic_write_bytes, fsync_dir

FORMAT = "finetunekit"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "atomic_write_bytes",
    "fsync_dir",
    "load_model_folder",
    "model_folder_files",
    "parse_config",
    "parse_weights",
    "save_model_folder",
    "tensors_to_bytes",
]


def tensors_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors refuses shared storage; cloning gives each tensor its own, on the CPU."""
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()})


def model_folder_files(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, bytes]:
    """The two files of a model folder, as bytes (checkpoints add the training state to these)."""
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, **config}
    cfg = json.dumps(full, indent=2, sort_keys=True, allow_nan=False)
    return {MODEL_FILE: tensors_to_bytes(state), CONFIG_FILE: cfg.encode()}


def save_model_folder(
    folder: str | os.PathLike[str], state: dict[str, torch.Tensor], config: dict[str, Any]
) -> None:
    """Write the model folder atomically (see the module docstring); raises CheckpointError when the
    path is a file, holds other files, or cannot be written (any earlier save there is left intact)."""
    try:
        files = model_folder_files(state, config)
    except ValueError as e:  # allow_nan=False: a NaN in the config would not load back
        raise CheckpointError(
            f"the model config cannot be saved as JSON ({e}); expected finite numbers."
        ) from e
    checkpoint.write_checkpoint(folder, files, {"kind": "model"})


def parse_config(data: bytes, source: str) -> dict[str, Any]:
    """config.json bytes -> the validated config dict."""
    return validate.model_config(validate.parse_json(data, source), source, FORMAT, FORMAT_VERSION)


def parse_weights(data: bytes, source: str) -> dict[str, torch.Tensor]:
    try:
        return st_load(data)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(
            f"{source} is not a readable safetensors file ({type(e).__name__}: {str(e)[:160]}); the save "
            "is corrupt. Save the model again or use an earlier checkpoint."
        ) from e


def _unverified(folder: Path) -> dict[str, bytes]:
    """The two files without a manifest (``verify=False``): still only plain files, size-checked."""
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise CheckpointError(
            f"model folder {str(folder)!r} {state}; expected a folder written by ft.save()."
        )
    out = {}
    for name in (CONFIG_FILE, MODEL_FILE):
        size = fs.regular_file_size(folder / name)
        out[name] = fs.read_small(folder / name, fs.MAX_JSON_BYTES if name == CONFIG_FILE else size)
    return out


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_ino, info.st_mtime_ns


def _read_settled(path: Path, folder: str | os.PathLike[str]) -> dict[str, bytes]:
    """The verified files; when a concurrent save swapped the folder while it was read (the manifest
    of one save, a file of the next), read again, up to three times, before calling it corrupt."""
    for attempt in range(3):
        before = _identity(path)
        try:
            return checkpoint.read_checkpoint(path, required=(CONFIG_FILE, MODEL_FILE))[0]
        except CheckpointError:
            path = checkpoint.resolve(folder)
            if attempt == 2 or _identity(path) == before:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def load_model_folder(
    folder: str | os.PathLike[str], verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and validated config of an ``ft.save()`` folder or a checkpoint.

    With ``verify`` (the default) the folder must have a manifest listing both files, and every
    checksum is verified before a byte is parsed. ``verify=False`` loads a folder without one (an
    older or hand-made save) after the same value checks; it is never the silent fallback."""
    path = checkpoint.resolve(folder)
    files = _read_settled(path, folder) if verify else _unverified(path)
    config = parse_config(files[CONFIG_FILE], repr(str(path / CONFIG_FILE)))
    state = parse_weights(files[MODEL_FILE], repr(str(path / MODEL_FILE)))
    validate.finite_tensors(state, repr(str(path / MODEL_FILE)))
    return state, config
