"""The training-state validators read both layouts: version 1 (flat keys, what capture() writes here) and
the registry layout (``version`` + one object per part), so a resume checks either the same way."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load as st_load
from saving_harness import interrupted_backup

from finetunekit.errors import CheckpointError
from finetunekit.saving import validate_training


@pytest.fixture(scope="module")
def v1(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    backup = interrupted_backup(Path(tmp_path_factory.mktemp("v1")))
    meta = json.loads((backup / "training.json").read_text())
    return meta, dict(st_load((backup / "training.safetensors").read_bytes()))


def as_registry(meta: dict[str, Any]) -> dict[str, Any]:
    """The same state in the registry layout: one entry per part."""
    parts = {
        "schedule": {"base_lr": meta["base_lr"], "cycle_start": 0, "scheduler": meta["schedule"]},
        "loop": {"skipped": meta["skipped"], "tracker": None},
        "callbacks": {"list": meta["callbacks"]},
        "rng": {"tensors": {"rng.torch": {"__tensor__": "rng.tensors.rng.torch"}}, "meta": meta["rng"]},
        "optimizer": {"tensors": {}, "meta": meta["optimizer"]},
    }
    keep = ("epoch", "step", "steps_per_epoch", "epochs")
    return {"version": 2, **{k: meta[k] for k in keep}, "parts": parts}


REGISTRY_ATTACKS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("version a string", lambda m: m.__setitem__("version", "2"), "version='2'"),
    ("parts missing", lambda m: m.pop("parts"), "'parts' is missing"),
    ("a part not an object", lambda m: m["parts"].__setitem__("loop", 3), "parts.loop=3"),
    (
        "NaN base_lr",
        lambda m: m["parts"]["schedule"].__setitem__("base_lr", float("nan")),
        "parts.schedule.base_lr",
    ),
    (
        "cycle after the epoch",
        lambda m: m["parts"]["schedule"].__setitem__("cycle_start", 99),
        "parts.schedule.cycle_start=99",
    ),
    ("negative skip count", lambda m: m["parts"]["loop"].__setitem__("skipped", -1), "parts.loop.skipped=-1"),
    (
        "callback state a list",
        lambda m: m["parts"]["callbacks"]["list"][0].__setitem__("state", []),
        "parts.callbacks.list[0].state",
    ),
    (
        "short python rng",
        lambda m: m["parts"]["rng"]["meta"]["python"].__setitem__(1, [0]),
        "parts.rng.meta.python[1]",
    ),
    (
        "optimizer without class",
        lambda m: m["parts"]["optimizer"]["meta"].pop("class"),
        "'parts.optimizer.meta.class' is missing",
    ),
    ("step beyond the epoch", lambda m: m.__setitem__("step", 10**6), "step=1000000"),
]


def test_both_layouts_of_a_real_state_pass(v1: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    meta, _ = v1
    assert validate_training.training_meta(meta, "t") is meta
    registry = as_registry(meta)
    assert validate_training.training_meta(registry, "t") is registry


@pytest.mark.parametrize(("case", "change", "words"), REGISTRY_ATTACKS, ids=[c[0] for c in REGISTRY_ATTACKS])
def test_registry_layout_values_are_validated(
    v1: tuple[dict[str, Any], dict[str, torch.Tensor]],
    case: str,
    change: Callable[[dict[str, Any]], Any],
    words: str,
) -> None:
    meta = copy.deepcopy(as_registry(v1[0]))
    change(meta)
    with pytest.raises(CheckpointError) as info:
        validate_training.training_meta(meta, "'x/training.json'")
    assert words in str(info.value) and "'x/training.json'" in str(info.value), str(info.value)


def test_registry_layout_tensors_are_validated(v1: tuple[dict[str, Any], dict[str, torch.Tensor]]) -> None:
    _, tensors = v1
    params = {"fc.weight": torch.zeros(3, 16)}
    good = {
        "rng": {"tensors": {k: tensors[k] for k in ("rng.torch", "rng.numpy")}},
        "optimizer": {"tensors": {}},
    }
    validate_training.decoded_parts(good, params, "t")
    bad = copy.deepcopy(good)
    bad["optimizer"]["tensors"] = {"optim.fc.weight.exp_avg": torch.zeros(2, 2)}
    with pytest.raises(CheckpointError, match=r"has shape \(2, 2\) but parameter 'fc.weight' has \(3, 16\)"):
        validate_training.decoded_parts(bad, params, "t")
    bad = copy.deepcopy(good)
    bad["rng"]["tensors"]["rng.numpy"] = torch.zeros(3, dtype=torch.int64)
    with pytest.raises(CheckpointError, match="'rng.numpy'"):
        validate_training.decoded_parts(bad, params, "t")
