"""Bytes and files: atomic model folders, manifests and checkpoints. Knows nothing of fits."""

from finetunekit.saving.model_folder import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    atomic_write_bytes,
    fsync_dir,
    load_model_folder,
    save_model_folder,
    tensors_to_bytes,
)

__all__ = [
    "CONFIG_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "MODEL_FILE",
    "atomic_write_bytes",
    "fsync_dir",
    "load_model_folder",
    "save_model_folder",
    "tensors_to_bytes",
]
