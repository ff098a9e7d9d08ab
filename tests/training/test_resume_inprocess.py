"""Resume exactness for the data forms and callbacks the subprocess harness does not cover, quickly:
a crash is an exception from a callback, the restart a new FineTuner in the same process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images, on_global_step
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, EarlyStopping, ReduceLROnPlateau
from finetunekit.strategies import GradualUnfreeze

X, Y = make_images(48, 3, 16, seed=4)


class Crash(Exception):
    pass


def tuner() -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0,
                   strategy=GradualUnfreeze(every=1))  # fmt: skip
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR  # a torch scheduler: its state is checkpointed
    return ft.compile(lr=0.05, schedule=cosine, schedule_kwargs={"T_max": 7})


def crash_at(ft: FineTuner, global_step: int) -> Any:
    def check(step: int) -> None:
        if step == global_step:
            raise Crash

    return on_global_step(check)


def train(data: Any, backup: Path | None, crash: int | None = None, save_freq: Any = 2, **kw: Any) -> Any:
    ft = tuner()
    cbs: list[Any] = [EarlyStopping(monitor="loss", patience=2, min_delta=10.0),
                      ReduceLROnPlateau(monitor="loss", patience=1, factor=0.5)]  # fmt: skip
    if backup is not None:
        cbs.append(BackupAndRestore(backup, save_freq=save_freq))
    if crash is not None:
        cbs.append(crash_at(ft, crash))
    x, y = data() if callable(data) else (data, None)
    try:
        history = ft.fit(x, y, batch_size=8, epochs=4, verbose=0, callbacks=cbs, **kw)
    except Crash:
        return None
    weights = {k: v.clone() for k, v in ft.model.state_dict().items()}
    return weights, history.history, history.epoch, ft.base_lr


def assert_same(a: Any, b: Any) -> None:
    assert a is not None and b is not None
    assert all(torch.equal(a[0][k], b[0][k]) for k in a[0])
    assert a[1:] == b[1:]  # history (all epochs), epoch list, base LR after ReduceLROnPlateau
    assert a[2] == [0, 1, 2]  # EarlyStopping (patience 2) stopped at the same epoch


def user_loader(generator: bool) -> Any:
    def make() -> tuple[DataLoader[Any], None]:
        images = torch.from_numpy(X).permute(0, 3, 1, 2).float() / 255
        ds = TensorDataset(images, torch.from_numpy(Y))
        g = torch.Generator().manual_seed(7) if generator else None
        return DataLoader(ds, batch_size=8, shuffle=True, generator=g), None

    return make


@pytest.mark.parametrize(
    ("data", "crash", "save_freq"),
    [
        (lambda: (X, Y), 9, 2),  # arrays, mid-epoch, with augmentation
        (lambda: (X, Y), 13, "epoch"),  # epoch-level backups
        (user_loader(generator=False), 10, 3),  # the user's DataLoader, shuffled by the global RNG
        (user_loader(generator=True), 7, 2),  # the user's DataLoader with its own generator
    ],
    ids=["arrays", "epoch_backups", "user_loader_global_rng", "user_loader_own_generator"],
)
def test_resume_is_bitwise_exact(tmp_path: Path, data: Any, crash: int, save_freq: Any) -> None:
    reference = train(data, None)
    assert train(data, tmp_path / "bk", crash=crash, save_freq=save_freq) is None
    assert_same(reference, train(data, tmp_path / "bk", save_freq=save_freq))


class Stream(IterableDataset):
    def __len__(self) -> int:
        return 6

    def __iter__(self) -> Any:
        g = torch.Generator().manual_seed(0)
        for i in range(6):
            yield torch.rand(8, 3, 16, 16, generator=g), torch.arange(8) % 3 + 0 * i


def test_a_loader_that_cannot_be_repositioned_backs_up_at_epoch_ends(tmp_path: Path) -> None:
    loader = DataLoader(Stream(), batch_size=None)
    with pytest.warns(RuntimeWarning, match="backs up at epoch ends instead"):
        assert train(lambda: (loader, None), tmp_path / "bk", crash=9, save_freq=2) is None
    names = [p.name for p in BackupAndRestore(tmp_path / "bk").checkpoints()]
    assert names == ["ckpt-e000001-s0000000"]
    with pytest.warns(RuntimeWarning, match="backs up at epoch ends instead"):
        resumed = train(lambda: (loader, None), tmp_path / "bk", save_freq=2)
    assert_same(train(lambda: (loader, None), None), resumed)


def test_resume_refuses_another_batch_size(tmp_path: Path) -> None:
    from finetunekit.errors import CheckpointError

    assert train(lambda: (X, Y), tmp_path / "bk", crash=5) is None
    ft = tuner()
    with pytest.raises(CheckpointError, match="batches per epoch"):
        ft.fit(X, Y, batch_size=16, epochs=4, verbose=0, callbacks=[BackupAndRestore(tmp_path / "bk")])
    assert np.isfinite(ft.base_lr)


def test_resume_refuses_a_backup_of_another_task(tmp_path: Path) -> None:
    """A single-label backup cannot continue as a multi-label fit (another loss and head meaning)."""
    from finetunekit.errors import CheckpointError

    assert train(lambda: (X, Y), tmp_path / "bk", crash=5) is None
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0,
                   strategy=GradualUnfreeze(every=1), task="multi_label")  # fmt: skip
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    with pytest.raises(CheckpointError, match="task='classification' but this run has task='multi_label'"):
        ft.fit(X, np.eye(3, dtype=np.float32)[Y], batch_size=8, epochs=4, verbose=0,
               callbacks=[BackupAndRestore(tmp_path / "bk")])  # fmt: skip
    assert all(torch.equal(v, ft.model.state_dict()[k]) for k, v in before.items())  # nothing loaded


def test_torchmetrics_objects_resume_their_epoch_state(tmp_path: Path) -> None:
    """A crash mid-epoch (step 4 of 6, backup after step 4): the resumed epoch's torchmetrics values,
    accumulated over batches before and after the crash, equal the uninterrupted run's."""
    tm = pytest.importorskip("torchmetrics")

    def run(backup: Path | None, crash: int | None) -> Any:
        torch.manual_seed(0)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0)
        auroc = tm.classification.MulticlassAUROC(num_classes=3)  # stores every score (a "cat" state)
        f1 = tm.classification.MulticlassF1Score(num_classes=3, average="macro")  # sums of counts
        ft.compile(lr=0.05, metrics=[auroc, f1])
        cbs: list[Any] = [] if backup is None else [BackupAndRestore(backup, save_freq=2)]
        if crash is not None:
            cbs.append(crash_at(ft, crash))
        try:
            return ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, augment=False, callbacks=cbs).history
        except Crash:
            return None

    reference = run(None, None)
    assert run(tmp_path / "bk", crash=10) is None  # epoch 1, batch 4 (a backup was written before it)
    resumed = run(tmp_path / "bk", None)
    assert {"multiclass_a_u_r_o_c", "multiclass_f1_score"} <= reference.keys() == resumed.keys()
    for key in reference:
        assert resumed[key] == reference[key], key
