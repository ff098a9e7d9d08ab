"""Everything a fit in progress is, captured into checkpoint files and put back exactly.

A training checkpoint is taken between two steps. It holds the files of ``ft.save()`` (the weights
validation measures: the EMA's when on, so ``FineTuner.load`` opens every checkpoint) and the fit's
:class:`~finetunekit.training.state.TrainingState`: every registered part's state
(:mod:`finetunekit.training.parts`: model, optimizer, schedule, loop counters and metrics, GradScaler and
accumulation window, EMA, mixing seed, callbacks, loader position, RNGs), as safetensors + JSON. Restoring
all of it, then skipping the batches already done without loading them
(:mod:`finetunekit.training.loader_state`), continues the run bitwise as if it had never stopped (on
CPU; on GPU up to the determinism of its kernels).
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from finetunekit.errors import CheckpointError
from finetunekit.saving import checkpoint, validate, validate_training
from finetunekit.saving.model_folder import (
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    MODEL_FILE,
    parse_config,
    tensors_to_bytes,
)
from finetunekit.strategies import lora
from finetunekit.training import loader_state, resume_checks
from finetunekit.training.context import FitParts
from finetunekit.training.state import decode, encode

TRAINING_TENSORS = "training.safetensors"
TRAINING_JSON = "training.json"
STATE_VERSION = 2  # 2: every part of the TrainingState registry
_COMPARED = ("spec", "num_classes", "in_chans", "strategy", "task")


@dataclass
class ResumePoint:
    """Where a restored fit continues: epoch ``epoch`` at batch ``step``, from ``batches`` when > 0."""

    epoch: int
    step: int
    batches: Any = None


def model_files(model_config: dict[str, Any], weights: dict[str, Any]) -> dict[str, bytes]:
    """The files of ``ft.save()``, so ``FineTuner.load`` opens every checkpoint."""
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **model_config}
    return {
        MODEL_FILE: tensors_to_bytes(weights),
        CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
    }


def capture(trainer: FitParts, epoch: int, step: int) -> dict[str, bytes]:
    """Checkpoint files for the point before batch ``step`` of ``epoch`` (``step`` 0: epoch start)."""
    parts = trainer.state.state_dict()
    if trainer.ema is None and not lora.has_adapters(trainer.model):  # the model file holds these already
        parts["model"] = {"in": MODEL_FILE}  # (an EMA's or a merged LoRA model's file does not)
    structure, tensors = encode(parts)
    meta: dict[str, Any] = {
        "version": STATE_VERSION,
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": trainer.steps_per_epoch,
        "epochs": trainer.epochs,
        "parts": structure,
        "fingerprints": resume_checks.fingerprints(trainer),  # [persist] compile settings and data
    }
    try:
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
    except TypeError as e:
        raise CheckpointError(
            f"the training state cannot be written as JSON ({e}); a callback's state_dict() or the LR "
            "scheduler's state holds a non-JSON value. Expected numbers, strings, lists and dicts only."
        ) from e
    files = model_files(trainer.model_config, trainer.measured_weights())
    files[TRAINING_TENSORS] = st_save(tensors)
    files[TRAINING_JSON] = meta_bytes
    return files


def _check_compatible(trainer: FitParts, config: dict[str, Any], meta: dict[str, Any], folder: Path) -> None:
    """Refuse a checkpoint of another model, class count, strategy or data size, naming the difference."""
    if meta.get("version") != STATE_VERSION:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has training state version {meta.get('version')!r}; this "
            f"finetunekit writes and reads version {STATE_VERSION}. Resume with the version that wrote it, "
            "or use another backup_dir to start fresh."
        )
    ours = trainer.model_config
    for key in _COMPARED:
        if config.get(key) != ours.get(key):
            raise CheckpointError(
                f"checkpoint {str(folder)!r} was written with {key}={config.get(key)!r} but this run has "
                f"{key}={ours.get(key)!r}; expected the same {key}. Resume with the configuration that wrote "
                "it, or point BackupAndRestore at another backup_dir to start fresh."
            )
    steps = trainer.steps_per_epoch
    if meta["steps_per_epoch"] != steps:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has {meta['steps_per_epoch']} batches per epoch but this run has "
            f"{steps}; expected the same data and batch_size. Resume with them, or use another backup_dir."
        )
    if meta["epochs"] != trainer.epochs:
        warnings.warn(
            f"checkpoint {str(folder)!r} was written by a fit with epochs={meta['epochs']}, this fit has "
            f"epochs={trainer.epochs}: the LR schedule is stretched to the new length from here on.",
            RuntimeWarning,
            stacklevel=4,
        )


def _position(trainer: FitParts, epoch: int, step: int) -> ResumePoint:
    """Put the training loader where the checkpoint's next batch is."""
    loader = trainer.loader
    if step == 0:
        loader_state.set_generator_state(loader, trainer.saved_generator)
        return ResumePoint(epoch, 0)
    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:  # a DistributedSampler shuffles by seed + epoch
        set_epoch(epoch)
    reason = loader_state.why_not_repositionable(loader)
    if reason is None:
        return ResumePoint(epoch, step, loader_state.positioned(loader, trainer.loop.epoch_start, step))
    warnings.warn(
        f"resuming in the middle of epoch {epoch} cannot be exact: {reason}. Skipping its first {step} "
        "batches by reading them; the samples and augmentation of the rest of this epoch may differ.",
        RuntimeWarning,
        stacklevel=4,
    )
    return ResumePoint(epoch, step, itertools.islice(iter(loader), step, None))


def _parse(files: dict[str, bytes], name: str, folder: Path) -> Any:
    """Safetensors or JSON only: a file of any other kind (a pickle, say) is refused, never run."""
    if name.endswith(".json"):  # [persist] NaN, deep nesting, bad UTF-8: CheckpointError naming the file
        return validate.parse_json(files[name], repr(str(folder / name)), finite=False)
    try:
        return st_load(files[name])
    except Exception as e:  # safetensors and json raise their own types
        raise CheckpointError(
            f"{str(folder / name)!r} is not a valid {name.rsplit('.', 1)[1]} file ({type(e).__name__}); "
            "expected a checkpoint written by finetunekit. It is not loaded (finetunekit never unpickles)."
        ) from e


def restore(trainer: FitParts, folder: str | Path) -> ResumePoint:
    """Put ``trainer``'s fit into the state saved in ``folder``; return where to continue.

    Checksums are verified and every value is checked before anything is changed; the schedule cycle of
    the saved epoch is set up first (the schedule part loads into it), and the RNG states are restored
    last (the registry's order), so the next batch sees exactly the saved generator states."""
    files, _ = checkpoint.read_checkpoint(folder, required=(CONFIG_FILE, MODEL_FILE))
    folder = Path(folder)
    if TRAINING_JSON not in files or TRAINING_TENSORS not in files:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} holds weights only (save_weights_only=True); expected a full "
            "training checkpoint to resume. Load the weights with FineTuner.load() instead."
        )
    config = parse_config(files[CONFIG_FILE], repr(str(folder / CONFIG_FILE)))  # [persist] validated
    meta = validate_training.training_meta(
        _parse(files, TRAINING_JSON, folder), repr(str(folder / TRAINING_JSON))
    )
    _check_compatible(trainer, config, meta, folder)
    tensors = _parse(files, TRAINING_TENSORS, folder)
    parts = decode(meta["parts"], tensors)
    if parts.get("model") == {"in": MODEL_FILE}:
        parts["model"] = _parse(files, MODEL_FILE, folder)
    resume_checks.check_restorable(trainer, meta, parts, folder)  # [persist] tensors, fingerprints
    epoch, step = int(meta["epoch"]), int(meta["step"])
    trainer.use_schedule_phase(epoch)
    trainer.state.load_state_dict(parts)
    point = _position(trainer, epoch, step)
    trainer.state["rng"].load_state_dict(parts["rng"])  # after the loader replayed its draws
    return point
