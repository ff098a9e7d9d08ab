"""One answer to "which weights are the model": with an EMA, validation, ft.save, ModelCheckpoint and the
backups' model file all hold the EMA's weights; find_lr after such a fit changes nothing at all; and a
fit's per-fit objects (feature cache, stepper, DDP wrapper) do not outlive it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from helpers import TinyNet, make_images
from safetensors.torch import load_file

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, ModelCheckpoint
from finetunekit.training.feature_cache import FeatureCache
from finetunekit.training.step import Stepper
from finetunekit.training.trainer import Trainer


def _tuner(**compile_kw: Any) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, image_size=16, device="cpu", seed=0)
    return ft.compile(lr=1e-2, **compile_kw)


def _equal_states(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _everything(ft: FineTuner) -> dict[str, torch.Tensor]:
    out = {f"model.{k}": v.clone() for k, v in ft.model.state_dict().items()}
    out.update({f"ema.{k}": v.clone() for k, v in ft.eval_model.state_dict().items()})
    assert ft.optimizer is not None
    for i, state in enumerate(ft.optimizer.state.values()):
        out.update({f"opt.{i}.{k}": v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)})
    out["rng"] = torch.get_rng_state()
    out["np"] = torch.from_numpy(np.random.get_state()[1].astype(np.int64))
    return out


def test_every_writer_holds_the_ema_weights_that_validation_measured(tmp_path: Path) -> None:
    ft = _tuner(ema_decay=0.8)
    x, y = make_images(48, 3, 16)
    best = ModelCheckpoint(tmp_path / "best.safetensors", monitor="val_loss", save_best_only=True,
                           save_weights_only=True)  # fmt: skip
    folder = ModelCheckpoint(tmp_path / "ckpt-{epoch}")
    backup = BackupAndRestore(tmp_path / "bk", delete_checkpoint=False)
    ft.fit(x, y, batch_size=8, epochs=2, verbose=0, validation_split=0.25, callbacks=[best, folder, backup])
    ema = {k: v.contiguous() for k, v in ft.eval_model.state_dict().items()}
    assert not _equal_states(ema, ft.model.state_dict())  # the EMA differs from the raw weights
    ft.save(tmp_path / "saved")
    written = {
        "ft.save": load_file(tmp_path / "saved" / "model.safetensors"),
        "ModelCheckpoint(.safetensors)": load_file(tmp_path / "best.safetensors"),
        "ModelCheckpoint(folder)": load_file(tmp_path / "ckpt-2" / "model.safetensors"),
        "BackupAndRestore": load_file(sorted((tmp_path / "bk").glob("ckpt-*"))[-1] / "model.safetensors"),
    }
    if ft.history is not None and ft.history.history["val_loss"][1] >= ft.history.history["val_loss"][0]:
        del written["ModelCheckpoint(.safetensors)"]  # epoch 1 did not improve: the file is epoch 0's
    for name, state in written.items():
        assert _equal_states(state, ema), name
    # the val_loss logged for the last epoch is the one of these weights
    xv, yv = make_images(48, 3, 16)
    loaded = FineTuner.load(tmp_path / "saved", model=TinyNet(num_classes=3))
    assert loaded.evaluate(xv, yv) == ft.evaluate(xv, yv)


def test_find_lr_after_an_ema_fit_leaves_every_weight_and_rng_bitwise() -> None:
    ft = _tuner(ema_decay=0.9)
    x, y = make_images(48, 3, 16)
    ft.fit(x, y, batch_size=8, epochs=1, verbose=0)
    before = _everything(ft)
    result = ft.find_lr(x, y, num_steps=12, batch_size=8)
    assert len(result.lrs) > 3
    after = _everything(ft)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, changed


def test_per_fit_objects_die_with_the_fit_and_summary_keeps_their_outcome() -> None:
    ft = _tuner()
    x, y = make_images(48, 3, 16)
    ft.fit(x, y, batch_size=8, epochs=1, verbose=0, augment=False)
    held = [v for v in vars(ft).values() if isinstance(v, (FeatureCache, Stepper, Trainer))]
    assert not held and ft._trainer is None
    assert "feature cache:" in ft.summary()
