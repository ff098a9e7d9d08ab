"""Optimizer and RNG state as (tensors, JSON) pairs, so checkpoints need no pickle.

``optimizer.state_dict()`` keys parameters by position and mixes tensors with Python values; torch saves
it with pickle. Here every tensor goes to safetensors under a key that names the parameter
(``optim.<param name>.<state key>``), and everything else (param-group hyperparameters by group name,
non-tensor state) to JSON. Keying by name instead of position means a checkpoint of another model
fails with the names that differ rather than loading momentum into the wrong tensors.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.errors import CheckpointError

Tensors = dict[str, torch.Tensor]
_OPT = "optim."
Gather = Callable[[torch.Tensor], torch.Tensor]  # a state tensor -> the whole tensor (sharded runs)
Place = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (whole tensor, its parameter) -> state


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, tuple):
        return list(value)
    return value


def optimizer_state(
    optimizer: torch.optim.Optimizer, model: nn.Module, gather: Gather | None = None
) -> tuple[Tensors, dict[str, Any]]:
    """Flatten ``optimizer.state_dict()``: tensors by parameter name, the rest as JSON.

    ``gather`` turns each state tensor into the whole tensor (an FSDP shard into the full one, a
    collective): it is called on every rank in the same order (parameter index, then state key)."""
    names = {id(p): n for n, p in model.named_parameters()}
    ordered = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
    sd = optimizer.state_dict()
    tensors: Tensors = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, state in sorted(sd["state"].items()):
        name = ordered[index]
        for key, value in sorted(state.items()):
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPT}{name}.{key}"] = value if gather is None else gather(value)
            else:
                scalars.setdefault(name, {})[key] = _jsonable(value)
    groups = [{k: _jsonable(v) for k, v in g.items() if k != "params"} for g in sd["param_groups"]]
    return tensors, {"class": type(optimizer).__name__, "groups": groups, "scalars": scalars}


def check_groups(optimizer: torch.optim.Optimizer, saved: list[dict[str, Any]]) -> None:
    now = [str(g.get("name")) for g in optimizer.param_groups]
    then = [str(g.get("name")) for g in saved]
    if now != then:
        raise CheckpointError(
            f"the checkpoint's optimizer has param groups {then} but this model has {now}; expected the "
            "same backbone and layer groups. Resume with the configuration that wrote the checkpoint."
        )


def restore_hyperparameters(optimizer: torch.optim.Optimizer, saved: list[dict[str, Any]]) -> None:
    for group, hyper in zip(optimizer.param_groups, saved, strict=True):
        for key, value in hyper.items():
            current = group.get(key)
            group[key] = tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value


def load_optimizer_state(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    meta: dict[str, Any],
    place: Place | None = None,
) -> None:
    """Inverse of :func:`optimizer_state`; refuses another optimizer class or other param groups.

    ``place`` turns a whole saved tensor into the state its parameter needs (the shard of it that
    this rank holds, for FSDP)."""
    if meta["class"] != type(optimizer).__name__:
        raise CheckpointError(
            f"the checkpoint was trained with optimizer {meta['class']} but compile() chose "
            f"{type(optimizer).__name__}; compile with the same optimizer to resume."
        )
    check_groups(optimizer, meta["groups"])
    names = {id(p): n for n, p in model.named_parameters()}
    params = [p for g in optimizer.param_groups for p in g["params"]]
    ordered = [names[id(p)] for p in params]
    index_of = {name: i for i, name in enumerate(ordered)}
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(_OPT):
            name, _, field = key[len(_OPT) :].rpartition(".")
            if name not in index_of:
                raise CheckpointError(
                    f"the checkpoint has optimizer state for {name!r}, which this model lacks."
                )
            index = index_of[name]
            state.setdefault(index, {})[field] = value if place is None else place(value, params[index])
    for name, values in meta["scalars"].items():
        state.setdefault(index_of[name], {}).update(values)
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    restore_hyperparameters(optimizer, meta["groups"])


def rng_state() -> tuple[Tensors, dict[str, Any]]:
    """Python, numpy, torch CPU and every CUDA device's generator state."""
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    tensors: Tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.numpy": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    version, internal, gauss = random.getstate()
    meta = {
        "python": [version, list(internal), gauss],
        "numpy": [name, int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def load_rng_state(tensors: Mapping[str, torch.Tensor], meta: dict[str, Any]) -> None:
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["rng.torch"])
    cuda_keys = sorted(
        (k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1])
    )
    cuda = [tensors[k] for k in cuda_keys]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
