"""ModelCheckpoint, CSVLogger, ReduceLROnPlateau, LearningRateScheduler; deterministic fits; flat memory."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images
from safetensors.torch import load_file

from finetunekit import FineTuner
from finetunekit.callbacks import (
    BackupAndRestore,
    CSVLogger,
    LambdaCallback,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
)
from finetunekit.saving import checkpoint
from finetunekit.strategies import DiscriminativeLR

X, Y = make_images(48, 3, 16, seed=3)


def tuner(**kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0, **kw)


def group_lrs(ft: FineTuner) -> dict[str, float]:
    assert ft.optimizer is not None
    return {g["name"]: g["lr"] for g in ft.optimizer.param_groups}


# -- ModelCheckpoint -------------------------------------------------------------------------------------
def test_model_checkpoint_every_epoch_with_keras_placeholders(tmp_path: Path) -> None:
    ft = tuner()
    path = str(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}")
    ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, validation_split=0.25, callbacks=[ModelCheckpoint(path)])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert [s[:7] for s in saved] == ["ckpt-01", "ckpt-02", "ckpt-03"]
    assert ft.history is not None
    assert saved[2] == f"ckpt-03-{ft.history.history['val_loss'][2]:.3f}"
    last = FineTuner.load(tmp_path / saved[2], model=TinyNet(num_classes=3))
    assert all(
        torch.equal(a, b)
        for a, b in zip(last.model.state_dict().values(), ft.model.state_dict().values(), strict=True)
    )
    assert (tmp_path / saved[2] / "training.safetensors").is_file()  # full state unless weights only


def test_model_checkpoint_save_best_only_keeps_the_best_epoch(tmp_path: Path) -> None:
    ft = tuner()
    best: dict[str, Any] = {}

    def remember(epoch: int, logs: dict[str, float]) -> None:
        if "val_loss" not in best or logs["val_loss"] < best["val_loss"]:
            best.update(
                val_loss=logs["val_loss"], weights={k: v.clone() for k, v in ft.model.state_dict().items()}
            )

    cb = ModelCheckpoint(tmp_path / "best.safetensors", save_best_only=True, save_weights_only=True)
    ft.compile(lr=0.05)
    ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, validation_split=0.25,
           callbacks=[LambdaCallback(on_epoch_end=remember), cb])  # fmt: skip
    saved = load_file(tmp_path / "best.safetensors")
    assert cb.best == best["val_loss"]
    assert all(torch.equal(saved[k], v) for k, v in best["weights"].items())
    assert cb.state_dict()["best"] == best["val_loss"]


def test_model_checkpoint_every_n_batches(tmp_path: Path) -> None:
    ft = tuner()
    cb = ModelCheckpoint(tmp_path / "b{batch}", save_freq=2, save_weights_only=True)
    ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b2", "b4", "b6"]
    for p in tmp_path.iterdir():
        checkpoint.verify(p)


# -- CSVLogger -------------------------------------------------------------------------------------------
def test_csv_logger_writes_keras_rows_and_appends(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    ft = tuner()
    ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, validation_split=0.25, callbacks=[CSVLogger(path)])
    rows = list(csv.reader(path.open()))
    header = ["epoch", "accuracy", "gap_accuracy", "gap_loss", "loss", "lr", "val_accuracy", "val_loss"]
    assert rows[0] == header
    assert [r[0] for r in rows[1:]] == ["0", "1"]
    assert ft.history is not None
    assert float(rows[2][4]) == ft.history.history["loss"][1]
    ft.fit(
        X,
        Y,
        batch_size=8,
        epochs=1,
        verbose=0,
        validation_split=0.25,
        callbacks=[CSVLogger(path, append=True)],
    )
    assert len(list(csv.reader(path.open()))) == 4


class Crash(Exception):
    pass


def test_csv_logger_after_a_resume_has_no_duplicate_rows(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"

    def run(crash: bool) -> None:
        ft = tuner()

        def maybe_crash(epoch: int, logs: dict[str, float]) -> None:
            if crash and epoch == 2:
                raise Crash

        cbs = [CSVLogger(path), LambdaCallback(on_epoch_end=maybe_crash), BackupAndRestore(tmp_path / "bk")]
        ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, callbacks=cbs)

    with pytest.raises(Crash):
        run(crash=True)  # epoch 2's row is written, then the crash: the backup is from epoch 1's end
    assert [r[0] for r in csv.reader(path.open())][1:] == ["0", "1", "2"]
    run(crash=False)
    assert [r[0] for r in csv.reader(path.open())][1:] == ["0", "1", "2", "3"]


# -- LR callbacks ----------------------------------------------------------------------------------------
def test_reduce_lr_on_plateau_scales_the_base_lr_and_keeps_group_ratios() -> None:
    ft = tuner(strategy=DiscriminativeLR(0.5))
    ft.compile(lr=1e-2, schedule="constant")
    cbs = [  # a metric that never improves: patience 1 halves the base LR after epochs 1, 2 and 3
        LambdaCallback(on_epoch_end=lambda e, logs: logs.__setitem__("never_improves", 0.0)),
        ReduceLROnPlateau(monitor="never_improves", patience=1, factor=0.5, mode="max"),
    ]
    ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, callbacks=cbs)
    assert ft.base_lr == pytest.approx(1e-2 * 0.5**3)
    ft.fit(X, Y, batch_size=8, epochs=1, verbose=0)
    lrs = group_lrs(ft)
    assert lrs["stem"] / lrs["head"] == pytest.approx(0.25) and lrs["stage1"] / lrs["head"] == pytest.approx(
        0.5
    )
    assert lrs["head"] == pytest.approx(1e-2 * 0.5**3)


def test_learning_rate_scheduler_sets_the_base_lr_each_epoch() -> None:
    ft = tuner(strategy=DiscriminativeLR(0.5))
    ft.compile(lr=1.0, schedule="constant")
    seen: list[float] = []
    cbs = [
        LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5**epoch),
        LambdaCallback(on_train_batch_end=lambda b, logs: seen.append(group_lrs(ft)["head"])),
    ]
    ft.fit(X, Y, batch_size=16, epochs=3, verbose=0, callbacks=cbs)
    assert seen == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 3)
    one_arg = LearningRateScheduler(lambda epoch: 1e-3 * (epoch + 1))
    ft.fit(X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[one_arg])
    assert ft.base_lr == pytest.approx(2e-3)


# -- determinism and memory ------------------------------------------------------------------------------
def test_deterministic_mode_is_on_during_fit_and_restored_after() -> None:
    ft = tuner()
    during: list[bool] = []
    before = torch.are_deterministic_algorithms_enabled()
    probe = LambdaCallback(
        on_train_begin=lambda logs: during.append(torch.are_deterministic_algorithms_enabled())
    )
    ft.fit(X, Y, batch_size=16, epochs=1, verbose=0, deterministic=True, callbacks=[probe])
    assert during == [True]
    assert torch.are_deterministic_algorithms_enabled() == before


def test_same_seed_same_bits_with_augmentation() -> None:
    a, b = tuner(), tuner()
    for ft in (a, b):
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, validation_split=0.25, augment=True)
    assert all(
        torch.equal(x, y)
        for x, y in zip(a.model.state_dict().values(), b.model.state_dict().values(), strict=True)
    )


def _rss_bytes() -> int:
    try:
        import psutil

        return int(psutil.Process(os.getpid()).memory_info().rss)
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    pytest.skip("no way to read RSS here")


def test_memory_stays_flat_over_ten_epochs_and_logs_hold_no_graph(tmp_path: Path) -> None:
    ft = tuner()
    rss: list[int] = []
    logged: list[Any] = []

    def on_epoch_end(epoch: int, logs: dict[str, Any]) -> None:
        rss.append(_rss_bytes())
        logged.extend(logs.values())

    cbs = [LambdaCallback(on_epoch_end=on_epoch_end), BackupAndRestore(tmp_path / "bk", save_freq=3)]
    ft.fit(X, Y, batch_size=8, epochs=11, verbose=0, validation_split=0.25, callbacks=cbs)
    growth = rss[-1] - rss[0]  # from the end of the first epoch (allocator warm-up) to the last
    assert growth <= max(0.02 * rss[0], 16 * 2**20), f"RSS grew by {growth / 2**20:.1f} MB over 10 epochs"
    assert all(type(v) is float for v in logged)


class RandomItems(torch.utils.data.Dataset):
    """Each item is a draw from torch's RNG in the process that loads it (a worker, here)."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.randint(0, 2**30, (1,)), i


def test_random_items_are_seeded_per_sample_and_epoch_with_or_without_workers() -> None:
    from finetunekit.data import PreparedData, make_loader

    def epochs(seed: int, workers: int = 2) -> list[list[int]]:
        data = PreparedData(RandomItems(), None, None, None, 8)
        loader = make_loader(data, batch_size=2, shuffle=True, seed=seed, num_workers=workers)
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)  # type: ignore[union-attr]  # what fit does
            loader.dataset.set_epoch(epoch)  # type: ignore[attr-defined]
            out.append(torch.cat([b[0].ravel() for b in loader]).tolist())
        return out

    first, again = epochs(0), epochs(0)
    assert first == again  # reproducible
    assert first == epochs(0, workers=0)  # which process loads a sample does not matter
    assert first[0] != first[1]  # a new draw each epoch
    assert len(set(first[0])) == 8  # every sample its own numbers
    assert epochs(1) != first
