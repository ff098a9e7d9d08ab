"""TensorBoard and MLflowLogger: what they write (read back from the event files and the MLflow file
store), and that a run resumed by BackupAndRestore has every step exactly once, with the values of an
uninterrupted run."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, LambdaCallback, MLflowLogger, TensorBoard
from finetunekit.errors import ConfigError
from finetunekit.strategies import GradualUnfreeze

X, Y = make_images(48, 3, 16, seed=4)  # 36 for training, batch 8 -> 5 batches per epoch
EPOCHS, STEPS = 4, 5


class Crash(Exception):
    pass


def _fit(callback: Any, backup: Path | None = None, crash_at: int | None = None) -> FineTuner | None:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0,
                   strategy=GradualUnfreeze(every=1))  # fmt: skip
    ft.compile(lr=0.05)
    seen = [0]

    def count(batch: int, logs: dict[str, float]) -> None:
        seen[0] += 1
        if crash_at is not None and seen[0] == crash_at:
            raise Crash

    cbs: list[Any] = [callback, LambdaCallback(on_train_batch_end=count)]
    if backup is not None:
        cbs.append(BackupAndRestore(backup, save_freq=4))
    try:
        ft.fit(X, Y, batch_size=8, epochs=EPOCHS, verbose=0, validation_split=0.25, callbacks=cbs)
    except Crash:
        return None
    return ft


def _scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_tensorboard_writes_epochs_batches_lrs_and_hparams(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    ft = _fit(TensorBoard(tmp_path / "tb", update_freq=2, hparams={"note": "x"}))
    assert ft is not None and ft.history is not None
    loss = _scalars(tmp_path / "tb" / "train", "epoch_loss")
    assert [s for s, _ in loss] == list(range(EPOCHS))
    np.testing.assert_allclose([v for _, v in loss], ft.history.history["loss"], rtol=1e-6)
    val = _scalars(tmp_path / "tb" / "validation", "epoch_loss")
    np.testing.assert_allclose([v for _, v in val], ft.history.history["val_loss"], rtol=1e-6)
    assert [s for s, _ in _scalars(tmp_path / "tb" / "batch", "batch_loss")] == list(
        range(1, EPOCHS * STEPS, 2)
    )
    head = _scalars(tmp_path / "tb" / "train", f"epoch_group_lr/{ft.groups[-1].name}")
    assert len(head) == EPOCHS and all(v > 0 for _, v in head)
    stem = _scalars(tmp_path / "tb" / "train", f"epoch_group_lr/{ft.groups[0].name}")
    assert len(stem) == EPOCHS
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    hp = EventAccumulator(str(tmp_path / "tb" / "train"))
    hp.Reload()
    assert "hparam/val_loss" in hp.Tags()["scalars"]


def test_tensorboard_resume_has_each_step_once(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    _fit(TensorBoard(tmp_path / "ref", update_freq="batch"))
    assert _fit(TensorBoard(tmp_path / "tb", update_freq="batch"), tmp_path / "bk", crash_at=15) is None
    time.sleep(1.1)  # event files sort by name, whose first key is the second they were created in
    assert _fit(TensorBoard(tmp_path / "tb", update_freq="batch"), tmp_path / "bk") is not None
    for run, tag, n in (("train", "epoch_loss", EPOCHS), ("validation", "epoch_accuracy", EPOCHS),
                        ("batch", "batch_loss", EPOCHS * STEPS)):  # fmt: skip
        got, ref = _scalars(tmp_path / "tb" / run, tag), _scalars(tmp_path / "ref" / run, tag)
        assert [s for s, _ in got] == list(range(n)), (run, tag)
        if run != "batch":  # batch logs are the loop's running means, refreshed every few batches
            np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=1e-5)


def test_update_freq_is_checked() -> None:
    with pytest.raises(ConfigError, match="update_freq=0"):
        TensorBoard("x", update_freq=0)
    with pytest.raises(ConfigError, match="update_freq='often'"):
        MLflowLogger(update_freq="often")


def _mlflow_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, str]:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    return MlflowClient(tracking_uri=uri), uri


def test_mlflow_logs_params_metrics_and_lrs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, uri = _mlflow_client(tmp_path, monkeypatch)
    logger = MLflowLogger(
        "digits", tracking_uri=uri, run_name="r1", params={"note": "x"}, tags={"team": "cv"}
    )
    ft = _fit(logger)
    assert ft is not None and ft.history is not None and logger.run_id is not None
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "r1" and run.data.tags["team"] == "cv"
    assert run.data.params["strategy"] == "GradualUnfreeze" and run.data.params["note"] == "x"
    assert float(run.data.params["lr"]) == pytest.approx(0.05)
    history = client.get_metric_history(logger.run_id, "val_accuracy")
    assert [m.step for m in history] == list(range(EPOCHS))
    np.testing.assert_allclose([m.value for m in history], ft.history.history["val_accuracy"])
    assert len(client.get_metric_history(logger.run_id, f"group_lr/{ft.groups[-1].name}")) == EPOCHS


def test_mlflow_resume_continues_the_run_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, uri = _mlflow_client(tmp_path, monkeypatch)
    ref = MLflowLogger("ref", tracking_uri=uri, update_freq="batch")
    _fit(ref)
    first = MLflowLogger("digits", tracking_uri=uri, update_freq="batch")
    assert _fit(first, tmp_path / "bk", crash_at=15) is None
    second = MLflowLogger("digits", tracking_uri=uri, update_freq="batch")
    assert _fit(second, tmp_path / "bk") is not None
    assert second.run_id == first.run_id
    assert len(client.search_runs([client.get_experiment_by_name("digits").experiment_id])) == 1
    for key, n in (("loss", EPOCHS), ("val_loss", EPOCHS), ("batch_loss", EPOCHS * STEPS)):
        got = client.get_metric_history(second.run_id, key)
        assert sorted(m.step for m in got) == list(range(n)), key
        if key != "batch_loss":  # batch logs are the loop's running means, refreshed every few batches
            want = client.get_metric_history(ref.run_id, key)
            got_values = [m.value for m in sorted(got, key=lambda m: m.step)]
            want_values = [m.value for m in sorted(want, key=lambda m: m.step)]
            np.testing.assert_allclose(got_values, want_values, rtol=1e-5)
    assert client.get_run(second.run_id).info.status == "FINISHED"
