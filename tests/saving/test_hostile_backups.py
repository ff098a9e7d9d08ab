"""Hostile or mismatched backups: a resume from an altered training.json / training.safetensors, or into
a fit compiled differently or trained on other data, ends in a CheckpointError naming the key or the
difference, before any step, with the weights untouched and the backup left as it was."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from saving_harness import X, Y, edit_json, interrupted_backup, reseal, same, snapshot, tuner, weights

from finetunekit.callbacks import BackupAndRestore
from finetunekit.errors import CheckpointError


def resume_refused(backup: Path, words: str, x: Any = X, **compile_kw: Any) -> None:
    ft = tuner()
    if compile_kw:
        ft.compile(**compile_kw)
    before, files = weights(ft), snapshot(backup.parent)
    with pytest.raises(CheckpointError) as info:
        ft.fit(
            x, Y, batch_size=8, epochs=2, verbose=0, callbacks=[BackupAndRestore(backup.parent, save_freq=4)]
        )
    assert words in str(info.value), str(info.value)
    assert same(weights(ft), before)  # no step taken, nothing restored half-way
    assert snapshot(backup.parent) == files  # the backup is neither removed nor changed


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda d: d.__setitem__(key, value)


def _part(name: str, change: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """An edit of one registered part's state (training.json holds one entry per part)."""
    return lambda d: change(d["parts"][name])


def _callbacks(d: dict[str, Any]) -> list[dict[str, Any]]:
    return d["parts"]["callbacks"]["list"]


def _callback_state(d: dict[str, Any]) -> None:
    history = next(c for c in _callbacks(d) if c["class"] == "History")
    history["state"] = {"history": 5, "epoch": "x"}


TRAINING_ATTACKS: list[tuple[str, Callable[[dict[str, Any]], Any], str]] = [
    ("step beyond the epoch", _set("step", 99), "step=99"),
    ("negative epoch", _set("epoch", -1), "epoch=-1"),
    ("epoch beyond the fit", _set("epoch", 7), "epoch=7"),
    ("step as a string", _set("step", "4"), "step='4'"),
    ("NaN base_lr", _part("schedule", _set("base_lr", float("nan"))), "base_lr=nan"),
    ("zero steps per epoch", _set("steps_per_epoch", 0), "steps_per_epoch=0"),
    ("missing rng", lambda d: d["parts"].pop("rng"), "'parts.rng' is missing"),
    (
        "short python rng",
        _part("rng", lambda s: s["meta"]["python"].__setitem__(1, [1, 2, 3])),
        "rng.meta.python[1]",
    ),
    (
        "numpy rng of another kind",
        _part("rng", lambda s: s["meta"]["numpy"].__setitem__(0, "PCG64")),
        "rng.meta.numpy[0]",
    ),
    ("other ranks' rngs not a list", _part("rng", _set("ranks", {"a": 1})), "parts.rng.ranks="),
    (
        "another rank's rng of another kind",
        _part(
            "rng",
            lambda s: s.__setitem__(
                "ranks",
                [
                    {
                        "tensors": s["tensors"],
                        "meta": {"python": s["meta"]["python"], "numpy": ["PCG64", *s["meta"]["numpy"][1:]]},
                    }
                ],
            ),
        ),
        "parts.rng.ranks[0].meta.numpy[0]",
    ),
    ("callbacks not a list", _part("callbacks", _set("list", {"a": 1})), "callbacks.list="),
    (
        "callback state not an object",
        lambda d: _callbacks(d)[0].__setitem__("state", [1]),
        "callbacks.list[0].state",
    ),
    ("malformed callback state", _callback_state, "callback History"),
    (
        "optimizer groups missing",
        _part("optimizer", lambda s: s["meta"].pop("groups")),
        "'parts.optimizer.meta.groups' is missing",
    ),
    (
        "optimizer state for a missing parameter",
        _part(
            "optimizer",
            lambda s: s["tensors"].__setitem__("optim.nope.exp_avg", {"__tensor__": "rng.tensors.rng.torch"}),
        ),
        "'optim.nope.exp_avg'",
    ),
    ("negative tracker count", _part("loop", lambda s: s["tracker"].__setitem__("n", -3)), "tracker.n=-3"),
    ("scheduler state a list", _part("schedule", _set("scheduler", [1])), "scheduler=[1]"),
    (
        "100 levels deep",
        lambda d: _callbacks(d)[0]["state"].__setitem__("x", _nested(100)),
        "levels of nesting",
    ),
]


def _nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(("case", "change", "words"), TRAINING_ATTACKS, ids=[c[0] for c in TRAINING_ATTACKS])
def test_training_json_values_are_validated(
    tmp_path: Path, case: str, change: Callable[[dict[str, Any]], Any], words: str
) -> None:
    backup = interrupted_backup(tmp_path)
    edit_json(backup, "training.json", change)
    resume_refused(backup, words)


def _edit_tensors(backup: Path, change: Callable[[dict[str, torch.Tensor]], Any]) -> None:
    path = backup / "training.safetensors"
    tensors = dict(st_load(path.read_bytes()))
    change(tensors)
    path.write_bytes(st_save(tensors))
    reseal(backup)


def _wrong_shape(t: dict[str, torch.Tensor]) -> None:
    key = next(k for k in t if k.endswith(".exp_avg"))
    t[key] = torch.zeros(7, 7)


TENSOR_ATTACKS: list[tuple[str, Callable[[dict[str, torch.Tensor]], Any], str]] = [
    ("optimizer state of another shape", _wrong_shape, "has shape (7, 7)"),
    (
        "torch rng truncated",
        lambda t: t.__setitem__("rng.tensors.rng.torch", t["rng.tensors.rng.torch"][:10].clone()),
        "'rng.torch'",
    ),
    ("numpy rng missing", lambda t: t.pop("rng.tensors.rng.numpy"), "lacks 'rng.tensors.rng.numpy'"),
    ("tracker as ints", lambda t: t.__setitem__("loop.tracker.loss", torch.tensor(1)), "'loss'"),
]


@pytest.mark.parametrize(("case", "change", "words"), TENSOR_ATTACKS, ids=[c[0] for c in TENSOR_ATTACKS])
def test_training_tensors_are_validated(
    tmp_path: Path, case: str, change: Callable[[dict[str, torch.Tensor]], Any], words: str
) -> None:
    backup = interrupted_backup(tmp_path)
    _edit_tensors(backup, change)
    resume_refused(backup, words)


def test_a_resume_with_another_learning_rate_is_refused(tmp_path: Path) -> None:
    backup = interrupted_backup(tmp_path)
    resume_refused(backup, "lr=0.002 -> 0.01", lr=0.01)


def test_a_resume_with_another_optimizer_setting_is_refused(tmp_path: Path) -> None:
    backup = interrupted_backup(tmp_path)
    resume_refused(backup, "weight_decay=0.01 -> 0.1", weight_decay=0.1)


def test_a_resume_on_other_data_of_the_same_size_is_refused(tmp_path: Path) -> None:
    backup = interrupted_backup(tmp_path)
    other = X.copy()
    other[0, 0, 0, 0] ^= 1  # one pixel differs; same shape, same number of batches
    resume_refused(backup, "other data", x=other)


def test_the_same_script_resumes(tmp_path: Path) -> None:
    backup = interrupted_backup(tmp_path)
    ft = tuner()
    ft.fit(
        np.array(X),
        Y,
        batch_size=8,
        epochs=2,
        verbose=0,
        callbacks=[BackupAndRestore(backup.parent, save_freq=4)],
    )
    assert ft.history is not None and len(ft.history.history["loss"]) == 2
