"""The TrainingState registry: every stateful part is registered once, and each part's load_state_dict is
the exact inverse of its state_dict (after training has moved every part on)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import L2SP, FineTuner
from finetunekit.callbacks import BackupAndRestore, Callback, EarlyStopping
from finetunekit.errors import CheckpointError
from finetunekit.training.state import TrainingState, decode, encode

# callbacks first (a refused state stops a restore before any weight changes), rng last (after the loader)
EVERY_PART = ["callbacks", "model", "optimizer", "schedule", "loop", "stepper", "ema", "mixing", "loader",
              "rng"]  # fmt: skip


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_equal, a, b))
    return bool(a == b)


def _clone(value: Any) -> Any:
    structure, tensors = encode(value)
    return decode(structure, tensors)  # encode copies every tensor


class RoundTrip(Callback):
    """Saves every part at batch 1, lets training move them all, loads them back at batch 4 and checks
    that each part's state_dict is again the saved one."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[str, Any] = {}
        self.names: list[str] = []
        self.moved: list[str] = []

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        state: TrainingState = self.run.state  # type: ignore[union-attr]
        if batch == 1:
            self.names = list(state)
            self.saved = {name: _clone(state[name].state_dict()) for name in state}
        if batch == 4:
            self.moved = [n for n in state if not _equal(state[n].state_dict(), self.saved[n])]
            for name in state:
                state[name].load_state_dict(_clone(self.saved[name]))
            for name in state:
                assert _equal(state[name].state_dict(), self.saved[name]), f"{name} did not round-trip"


def _fit(callbacks: list[Callback], **compile_kw: Any) -> FineTuner:
    torch.manual_seed(0)
    x, y = make_images(48, 3, 16)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0)
    ft.compile(lr=1e-2, **compile_kw)
    ft.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    return ft


def test_every_part_is_registered_once_and_round_trips_after_training_moved_it() -> None:
    check = RoundTrip()
    _fit([check, EarlyStopping(monitor="loss", patience=3)], ema_decay=0.9, mixup=0.4, cutmix=1.0,
         accumulate_steps=4, regularizer=L2SP(), clip_grad_norm=1.0)  # fmt: skip
    assert check.names == EVERY_PART
    # training moved what changes within an epoch (mixing: a seed; loader: drawn at the epoch start; rng:
    # TinyNet has no dropout and augmentation is seeded per sample, so nothing draws from the global RNG)
    assert set(check.moved) >= {"model", "optimizer", "loop", "stepper", "ema"}


def test_registry_refuses_a_part_twice_and_objects_without_state() -> None:
    state = TrainingState()
    state.register("a", torch.nn.Linear(1, 1))
    with pytest.raises(ValueError, match="'a' is registered twice"):
        state.register("a", torch.nn.Linear(1, 1))
    with pytest.raises(TypeError, match="'b'"):
        state.register("b", object())  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"no state for \['a'\]"):
        state.load_state_dict({})


def test_encode_keeps_tensors_out_of_the_json_and_decodes_them_back() -> None:
    state = {"w": torch.arange(3.0), "nested": {"n": 2, "ts": [torch.ones(2), None]}, "s": "x"}
    structure, tensors = encode(state)
    assert sorted(tensors) == ["nested.ts.0", "w"]
    assert structure["nested"]["n"] == 2 and structure["w"] == {"__tensor__": "w"}
    assert _equal(decode(structure, tensors), {**state, "nested": {"n": 2, "ts": [torch.ones(2), None]}})


def test_a_backup_without_ema_cannot_resume_a_fit_with_it(tmp_path: Any) -> None:
    backup = tmp_path / "bk"
    _fit([BackupAndRestore(backup, save_freq=3, delete_checkpoint=False)])
    # the compile fingerprint refuses it first, naming the option (the registry would say "no state for
    # ['ema']" if the fingerprint were absent)
    with pytest.raises(CheckpointError, match=r"ema_decay=None -> 0.9"):
        _fit([BackupAndRestore(backup, save_freq=3)], ema_decay=0.9)
