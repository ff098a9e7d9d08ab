"""The resumable parts of a fit, each a small :class:`~finetunekit._types.Stateful` over the object that
owns the state. :func:`register_parts` registers every one of them, once, in the order a restore needs
(the RNGs last: nothing may draw after them).

The parts of objects that live longer than one schedule cycle (the loop state, the stepper) are read
through the trainer, so a new cycle's objects are always the ones saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from finetunekit.distributed import collectives, env
from finetunekit.errors import CheckpointError
from finetunekit.metrics import MetricTracker
from finetunekit.saving import flat_state
from finetunekit.training import fsdp, loader_state, resume_checks
from finetunekit.training.context import FitParts
from finetunekit.training.state import TrainingState


class ModelPart:
    """The weights being trained (every parameter and buffer)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return dict(self.model.state_dict())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            self.model.load_state_dict(dict(state), strict=True)
        except RuntimeError as e:
            raise CheckpointError(
                f"the checkpoint's weights do not fit this model: {str(e).splitlines()[0]}"
            ) from e


class OptimizerPart:
    """Optimizer state by parameter name (:mod:`finetunekit.saving.flat_state`)."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.optimizer, self.model = optimizer, model

    def state_dict(self) -> dict[str, Any]:
        tensors, meta = flat_state.optimizer_state(self.optimizer, self.model)
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        flat_state.load_optimizer_state(self.optimizer, self.model, state["tensors"], state["meta"])


class SchedulePart:
    """The base LR (ReduceLROnPlateau changes it) and a torch scheduler's own state. The position itself
    is the loop's (epoch, step): built-in schedules are functions of it."""

    def __init__(self, trainer: FitParts) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        cfg = self.trainer.step_config
        schedule = cfg.schedule.state_dict() if hasattr(cfg.schedule, "state_dict") else None
        return {"base_lr": self.trainer.loop.base_lr, "cycle_start": cfg.first_epoch, "scheduler": schedule}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trainer.set_base_lr(float(state["base_lr"]))
        cfg = self.trainer.step_config
        same_cycle = int(state["cycle_start"]) == cfg.first_epoch  # else the new cycle starts fresh
        if state["scheduler"] is not None and same_cycle and hasattr(cfg.schedule, "load_state_dict"):
            cfg.schedule.load_state_dict(state["scheduler"])


class LoopPart:
    """The loop's counters that outlive a step: the non-finite skip count and the epoch's metrics."""

    def __init__(self, trainer: FitParts) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        loop = self.trainer.loop
        tracker = loop.tracker.state_dict() if loop.tracker is not None else None
        return {"skipped": loop.skipped, "tracker": tracker}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        loop, cfg = self.trainer.loop, self.trainer.step_config
        loop.skipped = int(state["skipped"])
        loop.tracker = None
        if state["tracker"] is not None:
            loop.tracker = MetricTracker(cfg.metrics, cfg.device)
            loop.tracker.load_state_dict(dict(state["tracker"]))


class StepperPart:
    """Precision and accumulation: the GradScaler's state and skip count, and the gradients of an
    accumulation window that was not complete when the checkpoint was taken."""

    def __init__(self, trainer: FitParts) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        stepper = self.trainer.stepper
        return {"scaler": stepper.scaler_state(), "accumulation": stepper.accumulation_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trainer.stepper.load_scaler_state(state["scaler"])
        self.trainer.stepper.load_accumulation_state(state["accumulation"])


class EMAPart:
    """The EMA's weights and update count (finetunekit.training.ema)."""

    def __init__(self, ema: Any) -> None:
        self.ema = ema

    def state_dict(self) -> dict[str, Any]:
        return dict(self.ema.training_state())

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema.load_training_state(state)


class CallbacksPart:
    """Every callback's ``state_dict()``; the k-th callback of a class gets the k-th saved state of it."""

    def __init__(self, callbacks: Any) -> None:
        self.callbacks = callbacks

    def state_dict(self) -> dict[str, Any]:
        return {"list": [{"class": type(cb).__name__, "state": cb.state_dict()} for cb in self.callbacks]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        by_class: dict[str, list[Any]] = {}
        for entry in state["list"]:
            by_class.setdefault(entry["class"], []).append(entry["state"])
        seen: dict[str, int] = {}
        for cb in self.callbacks:
            name = type(cb).__name__
            index = seen[name] = seen.get(name, -1) + 1
            states = by_class.get(name, [])
            if index < len(states):
                resume_checks.load_callback_state(cb, states[index], name, index)  # errors name it


class LoaderPart:
    """The training loader's generator and the RNG states its current epoch started from: with the
    loop's (epoch, step) they put the loader back at the next batch (finetunekit.training.loader_state)."""

    def __init__(self, trainer: FitParts) -> None:
        self.trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        generator = loader_state.generator_state(self.trainer.loader)
        return {"generator": generator, "epoch_start": dict(self.trainer.loop.epoch_start)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trainer.loop.epoch_start = dict(state["epoch_start"])
        self.trainer.saved_generator = state["generator"]


class RngPart:
    """Python, numpy, torch and CUDA global RNG states (dropout, and anything else drawing from them).

    Under DDP / FSDP each rank's own: gathered to rank 0 when a checkpoint is written
    (``TrainingState.gathered``), and each rank takes its own back on restore. Ranks seeded apart (the
    common ``torch.manual_seed(seed + rank)``) draw different dropout masks, and a resume that gave
    every rank rank 0's states would continue another run."""

    def __init__(self, distributed: bool = False) -> None:
        self.distributed = distributed
        self.others: list[dict[str, Any]] | None = None  # ranks 1..N-1, while gathered

    @staticmethod
    def _own() -> dict[str, Any]:
        tensors, meta = flat_state.rng_state()
        return {"tensors": tensors, "meta": meta}

    def gather(self) -> None:
        if self.distributed:
            self.others = collectives.all_gather_object(self._own())[1:]

    def release(self) -> None:
        self.others = None

    def state_dict(self) -> dict[str, Any]:
        state = self._own()
        if self.others is not None:
            state["ranks"] = list(self.others)
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine, ranks, rank = state, state.get("ranks"), env.rank()
        if ranks and rank > 0 and len(ranks) == env.world_size() - 1:  # else rank 0's (another world size)
            mine = ranks[rank - 1]
        flat_state.load_rng_state(mine["tensors"], mine["meta"])


def register_parts(trainer: FitParts) -> TrainingState:
    """Every stateful part of ``trainer``'s fit, registered once; a part that a compile option turns on
    (EMA, mixing) is registered when it is on."""
    state = TrainingState()
    # Callbacks first: a state a callback refuses stops the restore before any weight is replaced.
    state.register("callbacks", CallbacksPart(trainer.callbacks))
    if fsdp.is_sharded(trainer.model):  # [fsdp] full tensors in the files, each rank's shard loaded back
        state.register("model", fsdp.ShardedModelPart(trainer.model))
        state.register("optimizer", fsdp.ShardedOptimizerPart(trainer.optimizer, trainer.model))
    else:
        state.register("model", ModelPart(trainer.model))
        state.register("optimizer", OptimizerPart(trainer.optimizer, trainer.model))
    state.register("schedule", SchedulePart(trainer))
    state.register("loop", LoopPart(trainer))
    state.register("stepper", StepperPart(trainer))
    if trainer.ema is not None:
        state.register("ema", EMAPart(trainer.ema))
    if trainer.mixer is not None:
        state.register("mixing", trainer.mixer)
    state.register("loader", LoaderPart(trainer))
    state.register("rng", RngPart(distributed=trainer.dist.active))
    return state
