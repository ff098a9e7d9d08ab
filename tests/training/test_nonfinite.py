"""A non-finite loss is caught in its own step, before optimizer.step(): the weights (and BatchNorm
statistics) stay those of the last good step, under each compile(on_nonfinite=...) policy."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images, on_global_step
from torch import nn
from torch.utils.data import Dataset

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback, TerminateOnNaN
from finetunekit.errors import NonFiniteLossError
from finetunekit.training import nonfinite

X, Y = make_images(48, 3, 16, seed=2)
BAD_STEP = 3  # 6 batches of 8 per epoch


def nan_loss_at(*bad_calls: int) -> Any:
    """Cross-entropy that returns NaN on the given (0-based) calls."""
    ce = nn.CrossEntropyLoss()
    calls = {"n": -1}

    def loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = ce(logits, target)
        return value * float("nan") if calls["n"] in bad_calls or -1 in bad_calls else value

    return loss


def tuner(loss: Any, policy: str = "raise", **compile_kw: Any) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0)
    return ft.compile(loss=loss, on_nonfinite=policy, **compile_kw)


class Snapshots:
    """Weights + buffers (and the Adam step count) after every batch, by global step."""

    def __init__(self, ft: FineTuner) -> None:
        self.ft = ft
        self.states: dict[int, dict[str, torch.Tensor]] = {}
        self.callback = on_global_step(self.take)

    def take(self, step: int) -> None:
        self.states[step] = state(self.ft)


def state(ft: FineTuner) -> dict[str, torch.Tensor]:
    out = {k: v.clone() for k, v in ft.model.state_dict().items()}
    assert ft.optimizer is not None
    steps = [s["step"].clone() for s in ft.optimizer.state.values() if "step" in s]
    out["adam_steps"] = torch.stack(steps) if steps else torch.zeros(0)
    return out


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_raise_names_epoch_step_lr_and_keeps_the_last_good_weights() -> None:
    ft = tuner(nan_loss_at(BAD_STEP))
    snaps = Snapshots(ft)
    with pytest.raises(NonFiniteLossError) as info:
        ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[snaps.callback])
    message = str(info.value)
    for words in (
        "epoch 0",
        f"step {BAD_STEP}",
        "learning rates",
        "lower the learning rate",
        "on_nonfinite='skip'",
    ):
        assert words in message
    assert same(state(ft), snaps.states[BAD_STEP - 1])


def test_skip_drops_only_the_bad_step() -> None:
    ft = tuner(nan_loss_at(BAD_STEP), "skip")
    snaps = Snapshots(ft)
    history = ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[snaps.callback])
    assert same(snaps.states[BAD_STEP], snaps.states[BAD_STEP - 1])
    assert not same(snaps.states[BAD_STEP + 1], snaps.states[BAD_STEP])  # training went on
    assert all(v == v for v in history.history["loss"])  # the skipped batch is not in the mean


def test_skip_is_bounded() -> None:
    ft = tuner(nan_loss_at(-1), "skip")
    before = state(ft)
    with pytest.raises(NonFiniteLossError, match="11 consecutive steps"):
        ft.fit(X, Y, batch_size=4, epochs=2, verbose=0)
    after = state(ft)
    assert all(torch.equal(before[k], after[k]) for k in before if k != "adam_steps")


@pytest.mark.parametrize("how", ["policy", "callback"])
def test_stop_is_graceful(how: str) -> None:
    ft = tuner(nan_loss_at(BAD_STEP), "stop" if how == "policy" else "raise")
    snaps = Snapshots(ft)
    ended: list[int] = []
    cbs = [snaps.callback, LambdaCallback(on_train_end=lambda logs: ended.append(1))]
    if how == "callback":
        cbs.append(TerminateOnNaN())
    history = ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=cbs)
    assert ended == [1] and history.epoch == [0]
    assert max(snaps.states) == BAD_STEP
    assert same(state(ft), snaps.states[BAD_STEP - 1])


class NaNAt(Dataset):
    """Images whose item 5 is NaN: a data problem fit cannot see in a user's Dataset up front."""

    def __len__(self) -> int:
        return 48

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        g = torch.Generator().manual_seed(i)
        image = torch.randn(3, 16, 16, generator=g)
        return (image * float("nan") if i == 5 else image), i % 3


def test_nan_data_leaves_batchnorm_statistics_untouched() -> None:
    ft = tuner(nn.CrossEntropyLoss(), "skip")
    initial = state(ft)
    snaps = Snapshots(ft)
    ft.fit(NaNAt(), batch_size=8, epochs=1, verbose=0, shuffle=False, callbacks=[snaps.callback])
    # item 5 is in batch 0: its NaN reached the BatchNorm running statistics in the forward pass
    assert same(snaps.states[0], initial)
    assert not same(snaps.states[1], initial)
    assert all(bool(torch.isfinite(v.float()).all()) for v in state(ft).values())


def test_device_side_guard_skips_without_reading_the_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA path (fused optimizer, found_inf flag, read only at log syncs), run on CPU."""
    monkeypatch.setattr(nonfinite, "_device_skippable", lambda ctx, loss: True)
    fused = lambda params, lr: torch.optim.AdamW(params, lr=lr, fused=True)  # noqa: E731
    ft = tuner(nan_loss_at(BAD_STEP), "raise", optimizer=fused)
    snaps = Snapshots(ft)
    with pytest.raises(NonFiniteLossError, match=f"step {BAD_STEP}"):
        ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[snaps.callback])
    # raised at the next sync (end of epoch), but no step after the bad one was applied
    assert same(state(ft), snaps.states[BAD_STEP - 1])
    skip = tuner(nan_loss_at(BAD_STEP), "skip", optimizer=fused)
    snaps = Snapshots(skip)
    skip.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[snaps.callback])
    assert same(snaps.states[BAD_STEP], snaps.states[BAD_STEP - 1])
    assert not same(snaps.states[BAD_STEP + 1], snaps.states[BAD_STEP])
