"""Everything a fit in progress is, captured into checkpoint files and put back exactly.

A training checkpoint is taken between two steps and holds: the model; the optimizer state (by
parameter and group name, see :mod:`finetunekit.saving.flat_state`); the base LR and the schedule's own state;
the strategy configuration; every callback's ``state_dict()``; the loop position (epoch, next batch);
the epoch's running metrics; the RNG states the epoch's shuffling started from and the data loader's
generator; and the Python, numpy, torch and CUDA RNG states. Restoring all of it, then skipping the
batches already done without loading them (:mod:`finetunekit.training.loader_state`), continues the run
bitwise
as if it had never stopped (on CPU; on GPU up to the determinism of its kernels).
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from finetunekit.errors import CheckpointError
from finetunekit.metrics import MetricTracker
from finetunekit.saving import checkpoint, flat_state
from finetunekit.saving.model_folder import CONFIG_FILE, FORMAT, FORMAT_VERSION, MODEL_FILE, tensors_to_bytes
from finetunekit.training import loader_state

TRAINING_TENSORS = "training.safetensors"
TRAINING_JSON = "training.json"
_COMPARED = ("spec", "num_classes", "in_chans", "strategy")


@dataclass
class FitRun:
    """The parts of a running ``fit`` that checkpointing callbacks read (``tuner._run``)."""

    ctx: Any  # loop.TrainContext of the current schedule cycle (tuner._use_schedule_phase)
    callbacks: Any  # CallbackList
    loader: Any
    epochs: int
    steps: int = 1  # batches per epoch
    restarts: list[int] = field(default_factory=list)  # epochs where the strategy restarts the schedule
    dist: Any = None  # finetunekit.training.distributed's DistributedRun (a pass-through in one process)


@dataclass
class ResumePoint:
    """Where a restored fit continues: epoch ``epoch`` at batch ``step``, from ``batches`` when > 0."""

    epoch: int
    step: int
    batches: Any = None


def on_main_rank(tuner: Any, write: Any, what: str) -> None:
    """Under DDP only rank 0 writes a checkpoint (the others wait for it); alone, just write. The
    state written is rank 0's, so a DDP resume is safe but not bitwise (other ranks' RNG differ)."""
    dist = tuner._run.dist if tuner._run is not None else None
    if dist is None:
        write()
    else:
        dist.run_on_main(write, what)


def model_files(tuner: Any) -> dict[str, bytes]:
    """The files of ``ft.save()``, so ``FineTuner.load`` opens every checkpoint."""
    config = {"format": FORMAT, "format_version": FORMAT_VERSION, **tuner._model_config()}
    return {
        MODEL_FILE: tensors_to_bytes(tuner.model.state_dict()),
        CONFIG_FILE: json.dumps(config, indent=2, sort_keys=True).encode(),
    }


def _callback_states(callbacks: Any) -> list[dict[str, Any]]:
    return [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in callbacks]


def capture(tuner: Any, epoch: int, step: int) -> dict[str, bytes]:
    """Checkpoint files for the point before batch ``step`` of ``epoch`` (``step`` 0: epoch start)."""
    run: FitRun = tuner._run
    ctx = run.ctx
    opt_tensors, opt_meta = flat_state.optimizer_state(tuner.optimizer, tuner.model)
    rng_tensors, rng_meta = flat_state.rng_state()
    tensors = {**opt_tensors, **rng_tensors}
    generator = loader_state.generator_state(run.loader)
    if generator is not None:
        tensors["loader.generator"] = generator
    meta: dict[str, Any] = {
        "epoch": epoch,
        "step": step,
        "steps_per_epoch": ctx.steps_per_epoch,
        "epochs": run.epochs,
        "base_lr": ctx.base_lr,
        "skipped": ctx.skipped,
        "optimizer": opt_meta,
        "rng": rng_meta,
        "schedule": ctx.schedule.state_dict() if hasattr(ctx.schedule, "state_dict") else None,
        "schedule_cycle_start": ctx.first_epoch,
        "callbacks": _callback_states(run.callbacks),
    }
    if step > 0:  # mid-epoch: the running metrics and the RNG states the epoch started from
        tensors.update(ctx.epoch_start)
        tensors["tracker.loss"], tensors["tracker.correct"] = ctx.tracker._loss, ctx.tracker._correct
        meta["tracker_n"] = ctx.tracker._n
        tensors.update(ctx.tracker.stored_state())  # AUROC / mAP scores (finetunekit.metrics)
    try:
        meta_bytes = json.dumps(meta, sort_keys=True).encode()
    except TypeError as e:
        raise CheckpointError(
            f"the training state cannot be written as JSON ({e}); a callback's state_dict() or the LR "
            "scheduler's state holds a non-JSON value. Expected numbers, strings, lists and dicts only."
        ) from e
    files = model_files(tuner)
    files[TRAINING_TENSORS] = st_save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
    files[TRAINING_JSON] = meta_bytes
    return files


def _check_compatible(tuner: Any, config: dict[str, Any], meta: dict[str, Any], folder: Path) -> None:
    """Refuse a checkpoint of another model, class count, strategy or data size, naming the difference."""
    ours = tuner._model_config()
    for key in _COMPARED:
        if config.get(key) != ours.get(key):
            raise CheckpointError(
                f"checkpoint {str(folder)!r} was written with {key}={config.get(key)!r} but this run has "
                f"{key}={ours.get(key)!r}; expected the same {key}. Resume with the configuration that wrote "
                "it, or point BackupAndRestore at another backup_dir to start fresh."
            )
    steps = tuner._run.ctx.steps_per_epoch
    if meta["steps_per_epoch"] != steps:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} has {meta['steps_per_epoch']} batches per epoch but this run has "
            f"{steps}; expected the same data and batch_size. Resume with them, or use another backup_dir."
        )
    if meta["epochs"] != tuner._run.epochs:
        warnings.warn(
            f"checkpoint {str(folder)!r} was written by a fit with epochs={meta['epochs']}, this fit has "
            f"epochs={tuner._run.epochs}: the LR schedule is stretched to the new length from here on.",
            RuntimeWarning,
            stacklevel=4,
        )


def _load_callbacks(callbacks: Any, saved: list[dict[str, Any]]) -> None:
    """The k-th callback of each class gets the k-th saved state of that class."""
    by_class: dict[str, list[dict[str, Any]]] = {}
    for entry in saved:
        by_class.setdefault(entry["class"], []).append(entry["state"])
    seen: dict[str, int] = {}
    for cb in callbacks:
        name = type(cb).__name__
        index = seen[name] = seen.get(name, -1) + 1
        states = by_class.get(name, [])
        if index < len(states):
            cb.load_state_dict(states[index])


def _position(tuner: Any, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ResumePoint:
    run: FitRun = tuner._run
    ctx = run.ctx
    epoch, step = int(meta["epoch"]), int(meta["step"])
    if step == 0:
        loader_state.set_generator_state(run.loader, tensors.get("loader.generator"))
        return ResumePoint(epoch, 0)
    tracker = ctx.tracker = MetricTracker(ctx.metrics, ctx.device)
    tracker._loss = tensors["tracker.loss"].to(ctx.device)
    tracker._correct = tensors["tracker.correct"].to(ctx.device)
    tracker._n = int(meta["tracker_n"])
    tracker.load_stored_state(tensors)
    ctx.epoch_start = {k: v for k, v in tensors.items() if k.startswith("epoch_start.")}
    set_epoch = getattr(getattr(run.loader, "sampler", None), "set_epoch", None)
    if set_epoch is not None:  # a DistributedSampler shuffles by seed + epoch
        set_epoch(epoch)
    reason = loader_state.why_not_repositionable(run.loader)
    if reason is None:
        return ResumePoint(epoch, step, loader_state.positioned(run.loader, ctx.epoch_start, step))
    warnings.warn(
        f"resuming in the middle of epoch {epoch} cannot be exact: {reason}. Skipping its first {step} "
        "batches by reading them; the samples and augmentation of the rest of this epoch may differ.",
        RuntimeWarning,
        stacklevel=4,
    )
    return ResumePoint(epoch, step, itertools.islice(iter(run.loader), step, None))


def _parse(files: dict[str, bytes], name: str, folder: Path) -> Any:
    """Safetensors or JSON only: a file of any other kind (a pickle, say) is refused, never run."""
    try:
        return st_load(files[name]) if name.endswith(".safetensors") else json.loads(files[name])
    except Exception as e:  # safetensors and json raise their own types
        raise CheckpointError(
            f"{str(folder / name)!r} is not a valid {name.rsplit('.', 1)[1]} file ({type(e).__name__}); "
            "expected a checkpoint written by finetunekit. It is not loaded (finetunekit never unpickles)."
        ) from e


def restore(tuner: Any, folder: str | Path) -> ResumePoint:
    """Put the fit in ``tuner._run`` into the state saved in ``folder``; return where to continue.

    Checksums are verified before anything is parsed; the RNG states are restored last, after every
    step that could draw random numbers, so the next batch sees exactly the saved generator states."""
    files, _ = checkpoint.read_checkpoint(folder)
    folder = Path(folder)
    if TRAINING_JSON not in files:
        raise CheckpointError(
            f"checkpoint {str(folder)!r} holds weights only (save_weights_only=True); expected a full "
            "training checkpoint to resume. Load the weights with FineTuner.load() instead."
        )
    config = _parse(files, CONFIG_FILE, folder)
    meta = _parse(files, TRAINING_JSON, folder)
    _check_compatible(tuner, config, meta, folder)
    weights, tensors = _parse(files, MODEL_FILE, folder), _parse(files, TRAINING_TENSORS, folder)
    try:
        tuner.model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {str(folder)!r} do not fit this model: {str(e).splitlines()[0]}"
        ) from e
    flat_state.load_optimizer_state(tuner.optimizer, tuner.model, tensors, meta["optimizer"])
    tuner._use_schedule_phase(int(meta["epoch"]))
    ctx = tuner._run.ctx
    same_cycle = meta.get("schedule_cycle_start", 0) == ctx.first_epoch  # else a new cycle starts fresh
    if meta["schedule"] is not None and same_cycle and hasattr(ctx.schedule, "load_state_dict"):
        ctx.schedule.load_state_dict(meta["schedule"])
    tuner.base_lr = float(meta["base_lr"])
    ctx.skipped = int(meta["skipped"])
    _load_callbacks(tuner._run.callbacks, meta["callbacks"])
    point = _position(tuner, meta, tensors)
    flat_state.load_rng_state(tensors, meta["rng"])
    return point
