"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for backbones too large to replicate on every rank.

``FineTuner(..., distributed="fsdp")`` under torchrun shards the model at ``compile()``, before the
optimizer exists, so the optimizer holds the sharded parameters from the start (nothing is added mid-run):
each rank keeps 1/N of every parameter, gradient and optimizer state; a layer group's module is one FSDP
unit (all-gathered just before it runs, freed after), the root unit holds the rest (stem parameters,
the head). Strategies work unchanged: freezing flips ``requires_grad`` on the sharded parameters, and
FSDP2 reduce-scatters only the gradients that exist, so GradualUnfreeze and LPFT need no rebuild (DDP
needs a new wrapper per trainable set).

Runs on CPU with gloo as well as on CUDA with NCCL (checked with torch 2.14: forward, backward, an
optimizer step, a parameter frozen mid-run and a full state dict, with 2 gloo processes).

Data and results: training batches are split as under DDP (the global batch, a DistributedSampler), so
results equal one process. Evaluation and prediction run *every* sample on every rank: each forward
all-gathers parameters, a collective every rank must join, and contiguous shards of unequal length
would leave one rank waiting; summed metrics are then N times one rank's, whose ratios are the same.
``ft.save`` gathers the full state dict on every rank and rank 0 writes one ordinary model folder.

Checkpoints (BackupAndRestore, ModelCheckpoint) hold ordinary full tensors, the same files as a
one-process run: the model and optimizer parts of the training state gather their shards on every rank
(``TrainingState.gathered``, which the checkpointing callbacks enter on every rank before rank 0
writes), and a restore reads the files on every rank and keeps each rank's shard of them. So a sharded
run resumes exactly, and a backup of it opens with ``FineTuner.load`` like any other.

Not combined with FSDP (each raises a ConfigError at compile, before training): L2-SP and EMA (they
keep unsharded copies paired with sharded parameters) and LoRA (merging needs the adapted layers whole).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from finetunekit.backbones.grouping import group_modules
from finetunekit.data import PreparedData, make_loader
from finetunekit.distributed import collectives, env
from finetunekit.errors import CheckpointError, ConfigError
from finetunekit.saving import flat_state
from finetunekit.strategies.apply import group_params
from finetunekit.strategies.lora import has_adapters
from finetunekit.training.distributed import DistributedRun

MODE = "fsdp"


def check_mode(distributed: Any) -> None:
    """FineTuner(distributed=...): None, True, False or "fsdp"; "fsdp" only under torchrun."""
    if distributed is None or isinstance(distributed, bool):
        return
    if distributed != MODE:
        raise ConfigError(
            f"distributed={distributed!r} is invalid; expected None (DDP when launched by torchrun), "
            f"True, False or 'fsdp' (FSDP2 sharding for large backbones)"
        )
    if not (env.is_initialized() or env.launched_by_torchrun()):
        raise ConfigError(
            "distributed='fsdp' needs several processes: launch the script with `torchrun "
            "--nproc_per_node=N script.py` (see docs/large_backbones.md), or use distributed=None"
        )


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def shard(tuner: Any, regularizer: Any, ema_decay: float | None) -> None:
    """Shard ``tuner.model`` in place (once) and point the tuner's per-group parameter lists at the
    sharded parameters. Every rank starts from rank 0's weights."""
    if ema_decay is not None or regularizer is not None:
        raise ConfigError(
            f"distributed='fsdp' with {'ema_decay' if ema_decay is not None else 'regularizer'}=...: EMA and "
            f"L2-SP keep unsharded copies of the weights; compile without them, or use DDP "
            f"(distributed=None)"
        )
    if has_adapters(tuner.model):
        raise ConfigError(
            "distributed='fsdp' with LoRA(): adapters are a small fraction of the weights, so DDP "
            "(distributed=None) already fits where the frozen backbone fits; FSDP would have to gather "
            "each adapted layer whole to merge it for save()"
        )
    if is_sharded(tuner.model):
        return
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    env.init(tuner.device)
    collectives.broadcast_state(tuner.model)
    model, groups = tuner.model, tuner._backbone.groups
    mesh = init_device_mesh(tuner.device.type, (env.world_size(),))
    units = dict(model.named_modules())
    for group in groups[:-1]:
        for name in group_modules(model, group.param_names):
            fully_shard(units[name], mesh=mesh)
    fully_shard(model, mesh=mesh)
    trainable = tuner.strategy.trainable_params(model, groups)
    tuner._params_by_group = group_params(model, groups, trainable)  # the sharded Parameter objects


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state as ordinary CPU tensors, on every rank (a collective for a sharded model)."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, broadcast_from_rank0=False)
    state = get_model_state_dict(model, options=options)
    buffers = dict(model.named_buffers())
    return {k: (buffers[k].detach().cpu() if k in buffers else torch.as_tensor(v)) for k, v in state.items()}


class FSDPRun(DistributedRun):
    """A DistributedRun whose model is sharded in place: no wrapper per trainable set, every rank
    evaluating all samples (see the module docstring)."""

    def bind_model(self, model: nn.Module) -> nn.Module:
        """The sharded model itself: FSDP2 needs no wrapper, whatever trains (metrics sync: active)."""
        return model

    def release(self) -> None:
        """Nothing to free: the sharded model is the model."""

    def eval_loader(self, data: PreparedData, batch_size: int, **kwargs: Any) -> DataLoader[Any]:
        return make_loader(data, batch_size=batch_size, shuffle=False, seed=None, **kwargs)

    def gather_rows(self, rows: np.ndarray, data: PreparedData) -> np.ndarray:
        return rows


def fsdp_run(tuner: Any) -> FSDPRun:
    """The tuner's FSDPRun (the hook ``training.distributed.run_for`` calls for distributed="fsdp")."""
    run = getattr(tuner, "_distributed_run", None)
    if isinstance(run, FSDPRun) and env.is_initialized():
        return run
    env.init(tuner.device)
    if not is_sharded(tuner.model):
        collectives.broadcast_state(tuner.model)  # predict/evaluate before compile: replicated weights
    run = FSDPRun(True, tuner.device)
    tuner._distributed_run = run
    return run


# -- the training state of a sharded fit -------------------------------------------------------------
def gather_tensor(value: torch.Tensor) -> torch.Tensor:
    """A state tensor as the whole tensor on CPU (an FSDP shard is all-gathered: every rank calls it)."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor().cpu() if isinstance(value, DTensor) else value


def place_tensor(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The whole saved tensor ``value`` laid out like ``param``: this rank's shard of it, cut locally
    (every rank read the same file), or ``value`` itself for an unsharded parameter or a scalar."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(param, DTensor) or isinstance(value, DTensor) or value.ndim == 0:
        return value
    local = value.to(param.to_local().device)
    return distribute_tensor(local, param.device_mesh, param.placements, src_data_rank=None)


class ShardedModelPart:
    """The model part of a sharded fit: saved as the full state dict (what ``ft.save`` writes), loaded
    back by cutting each rank's shard out of the full tensors locally (:func:`place_tensor`).

    Not ``set_model_state_dict``: its full-state load scatters every tensor from rank 0, and with
    uneven shards the two ranks of a resumed run reached mismatched scatters (torch 2.14, gloo); cutting
    locally needs no collective at all, since every rank read the same file."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.gathered: dict[str, Any] | None = None

    def gather(self) -> None:
        self.gathered = full_state_dict(self.model)

    def release(self) -> None:
        self.gathered = None

    def state_dict(self) -> dict[str, Any]:
        """The full weights (a collective unless gathered; rank 0 holds them)."""
        return dict(self.gathered) if self.gathered is not None else full_state_dict(self.model)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        current = self.model.state_dict()
        missing, unexpected = sorted(set(current) - set(state)), sorted(set(state) - set(current))
        wrong = [k for k in current if k in state and tuple(state[k].shape) != tuple(current[k].shape)]
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"the checkpoint's weights do not fit this model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, other shapes {wrong[:5]}; expected a checkpoint of this model. Resume "
                "with the configuration that wrote it."
            )
        self.model.load_state_dict({k: place_tensor(v, current[k]) for k, v in state.items()}, strict=True)


class ShardedOptimizerPart:
    """The optimizer part of a sharded fit, in the same by-name files as an unsharded one.

    Written here on DTensor's public API rather than with ``get_optimizer_state_dict`` /
    ``set_optimizer_state_dict``: those initialise an empty optimizer with a zero-gradient step
    (``_init_optim_state``), which gives every trainable parameter an Adam step count, so a parameter
    that had not stepped yet (a group GradualUnfreeze opens later) would resume with other bias
    corrections than the run that never stopped: exact resume is the property that would be lost."""

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.optimizer, self.model = optimizer, model
        self.gathered: dict[str, Any] | None = None

    def gather(self) -> None:
        self.gathered = None
        self.gathered = self.state_dict()

    def release(self) -> None:
        self.gathered = None

    def state_dict(self) -> dict[str, Any]:
        """The whole optimizer state (a collective unless gathered)."""
        if self.gathered is not None:
            return self.gathered
        tensors, meta = flat_state.optimizer_state(self.optimizer, self.model, gather=gather_tensor)
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        flat_state.load_optimizer_state(
            self.optimizer, self.model, state["tensors"], state["meta"], place=place_tensor
        )
