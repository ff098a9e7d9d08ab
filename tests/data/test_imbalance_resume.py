"""The weighted sampler and the loss weights keep resume bitwise exact (crash mid-epoch, restart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, LambdaCallback

X, Y = make_images(40, 3, 16, seed=4)
KEEP = np.r_[np.flatnonzero(Y == 0), np.flatnonzero(Y != 0)[:8]]  # imbalanced: 14 of class 0, 8 others


class Crash(Exception):
    pass


def train(backup: Path | None, crash: int | None = None, **fit_kwargs: Any) -> Any:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0).compile(
        lr=0.05
    )
    cbs: list[Any] = [BackupAndRestore(backup, save_freq=2)] if backup is not None else []

    def check(batch: int, logs: dict[str, float]) -> None:
        run = ft._trainer  # the fit in progress (its RunView)
        if crash is not None and run.epoch * run.steps_per_epoch + batch == crash:
            raise Crash

    cbs.append(LambdaCallback(on_train_batch_end=check))
    try:
        history = ft.fit(X[KEEP], Y[KEEP], batch_size=6, epochs=3, verbose=0, callbacks=cbs, **fit_kwargs)
    except Crash:
        return None
    return {k: v.clone() for k, v in ft.model.state_dict().items()}, history.history


@pytest.mark.parametrize(
    "fit_kwargs",
    [{"sampling_weights": "balanced"}, {"class_weight": "balanced", "augment": False},
     {"sample_weight": np.linspace(0.5, 2.0, len(KEEP))}],
    ids=["sampler", "class_weight", "sample_weight"],
)  # fmt: skip
def test_resume_with_weights_is_bitwise_exact(tmp_path: Path, fit_kwargs: dict[str, Any]) -> None:
    reference = train(None, **fit_kwargs)
    assert train(tmp_path / "bk", crash=5, **fit_kwargs) is None
    resumed = train(tmp_path / "bk", **fit_kwargs)
    assert all(torch.equal(reference[0][k], resumed[0][k]) for k in reference[0])
    assert reference[1] == resumed[1]


def test_stored_scores_metrics_survive_a_mid_epoch_resume(tmp_path: Path) -> None:
    def run(backup: Path | None, crash: int | None = None) -> Any:
        torch.manual_seed(0)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0)
        ft.compile(lr=0.05, metrics=["auroc", "f1"])
        cbs: list[Any] = [BackupAndRestore(backup, save_freq=2)] if backup is not None else []

        def check(batch: int, logs: dict[str, float]) -> None:
            run = ft._trainer  # the fit in progress (its RunView)
            if crash is not None and run.epoch * run.steps_per_epoch + batch == crash:
                raise Crash

        cbs.append(LambdaCallback(on_train_batch_end=check))
        try:
            return ft.fit(X, Y, batch_size=6, epochs=2, verbose=0, callbacks=cbs).history
        except Crash:
            return None

    reference = run(None)
    assert run(tmp_path / "bk", crash=4) is None
    assert run(tmp_path / "bk") == reference
