"""Plain, safe files (DESIGN decision 6): safetensors for tensors, JSON for config; atomic writes.

An atomic write goes to a temporary file in the destination folder, is fsynced, then ``os.replace``d
over the target, so a crash mid-write leaves the previous file intact and loadable.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from finetunekit.errors import CheckpointError

FORMAT = "finetunekit"
FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
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


def tensors_to_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """safetensors refuses shared storage; cloning gives each tensor its own, on the CPU."""
    return st_save({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()})


def save_model_folder(
    folder: str | os.PathLike[str], state: dict[str, torch.Tensor], config: dict[str, Any]
) -> None:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(
            f"save path {str(folder)!r} is a file; expected a folder path, e.g. 'runs/my_model'"
        )
    try:
        from finetunekit.saving.checkpoint import MANIFEST, manifest_bytes

        model = tensors_to_bytes(state)
        cfg = json.dumps(
            {"format": FORMAT, "format_version": FORMAT_VERSION, **config}, indent=2, sort_keys=True
        )
        files = {MODEL_FILE: model, CONFIG_FILE: cfg.encode()}
        (folder / MANIFEST).unlink(missing_ok=True)  # a half-rewritten folder must not look verified
        for name, data in files.items():
            atomic_write_bytes(folder / name, data)
        atomic_write_bytes(folder / MANIFEST, manifest_bytes(files, {"kind": "model"}))
    except OSError as e:
        raise CheckpointError(
            f"could not write the model to {str(folder)!r}: {e.strerror or e}; choose a writable folder "
            f"with free space (any earlier save there is left intact)"
        ) from e


def load_model_folder(folder: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights and config of an ``ft.save()`` folder or a checkpoint; with a manifest (all we write
    have one) every file's checksum is verified before it is parsed."""
    from finetunekit.saving import checkpoint

    folder = checkpoint.resolve(folder)
    if (folder / checkpoint.MANIFEST).is_file():
        checkpoint.verify(folder)
    config_path, model_path = folder / CONFIG_FILE, folder / MODEL_FILE
    for p in (config_path, model_path):
        if not p.is_file():
            raise CheckpointError(
                f"{str(p)!r} does not exist; FineTuner.load expects a folder written by ft.save(), holding "
                f"{CONFIG_FILE} and {MODEL_FILE}"
            )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(config_path)!r} is not valid JSON ({e}); the save is corrupt") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(
            f"{str(config_path)!r} is not a finetunekit model config (no format={FORMAT!r})"
        )
    try:
        state = st_load(model_path.read_bytes())
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(
            f"{str(model_path)!r} is not a readable safetensors file ({e}); the save is corrupt"
        ) from e
    return state, config
