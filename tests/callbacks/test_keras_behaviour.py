"""What a Keras user porting a script expects from fit and its callbacks (issue 14): unknown monitors
raise before training, plateau callbacks start afresh per fit, ``self.model.stop_training`` stops."""

from __future__ import annotations

import math
import signal
from typing import Any

import numpy as np
import pytest
import torch
from callback_harness import FakeTuner, simulate_fit
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import (
    Callback,
    EarlyStopping,
    LambdaCallback,
    ModelCheckpoint,
    ReduceLROnPlateau,
    RetentionMonitor,
)
from finetunekit.callbacks.monitor import fit_log_keys
from finetunekit.errors import ConfigError

X, Y = make_images(48, 3, 16, seed=5)


def tuner() -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0)


class StepCounter(Callback):
    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self.steps += 1


# -- item 1: an unknown monitor raises at train begin, naming the keys ---------------------------------
@pytest.mark.parametrize(
    "make",
    [
        lambda: EarlyStopping(monitor="val_acc"),
        lambda: ReduceLROnPlateau(monitor="val_acc"),
        lambda: ModelCheckpoint("unused", monitor="val_acc", save_best_only=True),
    ],
    ids=["EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"],
)
def test_unknown_monitor_raises_before_any_step_naming_the_keys(make: Any) -> None:
    ft = tuner()
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    counter = StepCounter()
    with pytest.raises(ConfigError) as info:
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, validation_split=0.25, callbacks=[make(), counter])
    message = str(info.value)
    assert "monitor='val_acc'" in message and "Did you mean 'val_accuracy'?" in message
    for key in ("'loss'", "'accuracy'", "'val_loss'", "'val_accuracy'", "'lr'"):
        assert key in message
    assert counter.steps == 0
    assert all(torch.equal(v, ft.model.state_dict()[k]) for k, v in before.items())


def test_val_monitor_without_validation_data_says_how_to_get_it() -> None:
    with pytest.raises(ConfigError, match=r"val_ keys need fit\(validation_data=") as info:
        tuner().fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[EarlyStopping()])
    assert "['loss', 'accuracy', 'lr']" in str(info.value)


def test_model_checkpoint_without_save_best_only_does_not_check_the_monitor(tmp_path: Any) -> None:
    cb = ModelCheckpoint(tmp_path / "m{epoch}.safetensors", monitor="nope", save_weights_only=True)
    tuner().fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[cb])
    assert (tmp_path / "m1.safetensors").is_file()


def test_keys_declared_by_a_callback_are_accepted() -> None:
    keys = fit_log_keys(["accuracy"], True, [RetentionMonitor(X[:8])])
    assert keys == ["loss", "accuracy", "lr", "val_loss", "val_accuracy", "gap_loss", "gap_accuracy",
                    "retention_feature_sim", "retention_weight_change"]  # fmt: skip

    class AddsScore(Callback):
        log_keys = ("score",)

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            logs["score"] = float(epoch)

    es = EarlyStopping(monitor="score", mode="max", patience=0)
    history = tuner().fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[AddsScore(), es])
    assert history.history["score"] == [0.0, 1.0, 2.0] and es.best == 2.0


def test_an_undeclared_key_from_a_custom_callback_is_judged_on_the_first_epoch() -> None:
    adds = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.__setitem__("custom", 1.0))
    es = EarlyStopping(monitor="custom", patience=0)
    history = tuner().fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[adds, es])
    assert len(history.epoch) == 2  # 1.0 never improves on 1.0: stops at the second epoch
    typo = EarlyStopping(monitor="costum", patience=0)
    with pytest.raises(ConfigError, match=r"the epoch logs have no 'costum' key.*Did you mean 'custom'"):
        tuner().fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[adds, typo])


def test_batch_level_checkpoints_do_not_judge_an_undeclared_epoch_key(tmp_path: Any) -> None:
    adds = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.__setitem__("custom", float(epoch)))
    cb = ModelCheckpoint(tmp_path / "best.safetensors", monitor="custom", mode="max", save_best_only=True,
                         save_weights_only=True, save_freq=2)  # fmt: skip
    tuner().fit(X, Y, batch_size=8, epochs=1, verbose=0, callbacks=[adds, cb])  # batch logs lack "custom"
    assert not (tmp_path / "best.safetensors").exists()


# -- item 3: plateau state resets per fit, a resume keeps it -------------------------------------------
class LRTuner(FakeTuner):
    def __init__(self) -> None:
        super().__init__()
        self.base_lr = 0.1


def test_reduce_lr_on_plateau_starts_afresh_at_each_fit() -> None:
    ft = LRTuner()
    cb = ReduceLROnPlateau(monitor="loss", patience=1, factor=0.1)
    simulate_fit([cb], [{"loss": 1.0}, {"loss": 0.5}], tuner=ft)
    assert ft.base_lr == 0.1
    # A second fit whose loss improves throughout, but stays above the first fit's best (0.5): Keras
    # resets best/wait/cooldown at train begin, so the LR is not cut (it used to go 0.1 -> 0.001).
    simulate_fit([cb], [{"loss": 0.9}, {"loss": 0.8}, {"loss": 0.7}], tuner=ft)
    assert ft.base_lr == 0.1
    assert cb.best == 0.7 and cb.wait == 0


def test_reduce_lr_on_plateau_keeps_a_state_loaded_before_the_fit() -> None:
    ft = LRTuner()
    cb = ReduceLROnPlateau(monitor="loss", patience=1, factor=0.1, cooldown=2)
    cb.load_state_dict({"wait": 0, "cooldown_counter": 0, "best": 0.5})  # what BackupAndRestore does
    simulate_fit([cb], [{"loss": 0.9}], tuner=ft, initial_epoch=3)
    assert ft.base_lr == pytest.approx(0.01) and cb.cooldown_counter == 2


def test_early_stopping_starts_afresh_at_each_real_fit() -> None:
    es = EarlyStopping(monitor="loss", patience=0, min_delta=100.0)  # never improves after the first
    ft = tuner()
    assert len(ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, callbacks=[es]).epoch) == 2
    assert len(ft.fit(X, Y, batch_size=8, epochs=4, verbose=0, callbacks=[es]).epoch) == 2


# -- item 4: self.model.stop_training stops, whichever object it is set on -----------------------------
class StopOnModel(Callback):
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if batch == 2:
            self.model.stop_training = True  # the Keras idiom; self.model is the nn.Module


def test_model_stop_training_stops_after_the_batch() -> None:
    ft, counter = tuner(), StepCounter()
    history = ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[StopOnModel(), counter])
    assert counter.steps == 3 and history.epoch == [0]
    assert ft.stop_training and ft.model.stop_training  # type: ignore[truthy-function]


class StopAtEpochEnd(Callback):
    def __init__(self, on: str) -> None:
        super().__init__()
        self.on = on

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        (self.model if self.on == "model" else self.tuner).stop_training = True


@pytest.mark.parametrize("on", ["model", "tuner"])
def test_stop_training_set_at_epoch_end_on_either_object_stops_after_that_epoch(on: str) -> None:
    ft = tuner()
    assert ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[StopAtEpochEnd(on)]).epoch == [0]
    # The next fit starts with the flag cleared on both objects.
    assert ft.fit(X, Y, batch_size=8, epochs=2, verbose=0).epoch == [0, 1]
    assert not ft.stop_training and not ft.model.stop_training  # type: ignore[truthy-function]


# -- item 5: History always has the epoch's loss ----------------------------------------------------------
def test_terminate_on_nan_in_the_first_batch_logs_the_non_finite_loss() -> None:
    from finetunekit.callbacks import TerminateOnNaN

    ft = tuner()
    ft.compile(loss=lambda logits, y: torch.nn.functional.cross_entropy(logits, y) * float("nan"))
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    batch_logs: list[dict[str, float]] = []
    grab = LambdaCallback(on_train_batch_end=lambda batch, logs: batch_logs.append(dict(logs)))
    history = ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, callbacks=[TerminateOnNaN(), grab])
    assert history.epoch == [0] and len(batch_logs) == 1
    assert math.isnan(history.history["loss"][0]) and math.isnan(history.history["accuracy"][0])
    assert math.isnan(batch_logs[0]["loss"])
    assert all(torch.equal(v, ft.model.state_dict()[k]) for k, v in before.items())  # never applied


# -- item 6: test and predict batch hooks get logs --------------------------------------------------------
def test_test_batch_end_gets_running_loss_and_metrics_and_predict_batch_end_gets_outputs() -> None:
    ft = tuner()
    test_logs: list[dict[str, Any]] = []
    outputs: list[Any] = []
    cb = LambdaCallback(
        on_test_batch_end=lambda batch, logs: test_logs.append(dict(logs)),
        on_predict_batch_end=lambda batch, logs: outputs.append(logs["outputs"]),
    )
    result = ft.evaluate(X, Y, batch_size=16, callbacks=[cb])
    assert len(test_logs) == 3 and all(set(logs) == {"loss", "accuracy"} for logs in test_logs)
    assert test_logs[0]["loss"] > 0 and 0 <= test_logs[0]["accuracy"] <= 1
    probs = ft.predict(X, batch_size=16, callbacks=[cb])
    assert [o.shape for o in outputs] == [(16, 3)] * 3
    assert np.array_equal(np.concatenate(outputs), probs)
    assert result["loss"] > 0


# -- item 10: messages and bars -----------------------------------------------------------------------------
def test_early_stopping_says_when_it_stopped_and_what_it_restored(capsys: pytest.CaptureFixture[str]) -> None:
    es = EarlyStopping(monitor="loss", patience=2, min_delta=100.0, restore_best_weights=True)
    tuner().fit(X, Y, batch_size=8, epochs=5, verbose=2, callbacks=[es])
    out = capsys.readouterr().out
    assert "Epoch 3: early stopping: loss did not improve for 2 epochs (best " in out
    assert "at epoch 1)" in out
    assert "Restoring model weights from the end of the best epoch: 1." in out
    quiet = EarlyStopping(monitor="loss", patience=1, min_delta=100.0)
    tuner().fit(X, Y, batch_size=8, epochs=5, verbose=0, callbacks=[quiet])  # "auto" follows fit
    assert "early stopping" not in capsys.readouterr().out


def test_backup_and_restore_says_where_it_resumed(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from finetunekit.callbacks import BackupAndRestore

    def crash(batch: int, logs: dict[str, float]) -> None:
        if ft._trainer is not None and ft._trainer.epoch == 1 and batch == 3:
            raise KeyError("crash")

    ft = tuner()
    backup = lambda: BackupAndRestore(tmp_path / "bk", save_freq=2)  # noqa: E731
    with pytest.raises(KeyError):
        ft.fit(X, Y, batch_size=8, epochs=3, verbose=2,
               callbacks=[backup(), LambdaCallback(on_train_batch_end=crash)])  # fmt: skip
    tuner().fit(X, Y, batch_size=8, epochs=3, verbose=2, callbacks=[backup()])
    # Backups every 2 batches counted across epochs: the last one before the crash (epoch 2, batch 4)
    # was taken after 2 of epoch 2's 6 batches.
    assert "BackupAndRestore: resumed from epoch 2, step 2 of 6 (backup " in capsys.readouterr().out


@pytest.mark.parametrize("verbose", [0, 1, 2])
def test_evaluate_and_predict_show_progress_when_asked(
    verbose: int, capsys: pytest.CaptureFixture[str]
) -> None:
    ft = tuner()
    ft.evaluate(X, Y, batch_size=16, verbose=verbose)
    ft.predict(X, batch_size=16, verbose=verbose)
    captured = capsys.readouterr()
    if verbose == 0:
        assert captured.out == "" and captured.err == ""
    elif verbose == 1:
        assert "Evaluate 3/3" in captured.err and "loss=" in captured.err and "Predict 3/3" in captured.err
    else:
        assert "Evaluate - 3 steps - " in captured.out and " - loss: " in captured.out
        assert "Predict - 3 steps - " in captured.out


def test_evaluate_rejects_a_bad_verbose() -> None:
    with pytest.raises(ConfigError, match=r"evaluate\(verbose=3\)"):
        tuner().evaluate(X, Y, verbose=3)


# -- item 9: Ctrl-C keeps what was done --------------------------------------------------------------------
class InterruptingSGD(torch.optim.SGD):
    """Plain SGD that receives a Ctrl-C halfway through its ``interrupt_at``-th step (1-based)."""

    interrupt_at = 0

    def __init__(self, params: Any, lr: float) -> None:
        super().__init__(params, lr=lr)
        self.count = 0

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        self.count += 1
        for index, group in enumerate(self.param_groups):
            if index == 1 and self.count == self.interrupt_at:
                signal.raise_signal(signal.SIGINT)  # some groups updated, others not yet
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])


def sgd_tuner(interrupt_at: int) -> FineTuner:
    InterruptingSGD.interrupt_at = interrupt_at
    ft = tuner()
    return ft.compile(optimizer=InterruptingSGD, lr=0.05, schedule="constant")


def test_ctrl_c_keeps_completed_epochs_and_the_last_whole_step(capsys: pytest.CaptureFixture[str]) -> None:
    reference = sgd_tuner(interrupt_at=0)

    def stop_at_batch_3_of_epoch_2(batch: int, logs: dict[str, float]) -> None:
        assert reference._trainer is not None
        reference.stop_training = reference._trainer.epoch == 1 and batch == 2

    stop = LambdaCallback(on_train_batch_end=stop_at_batch_3_of_epoch_2)
    reference.fit(X, Y, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[stop])  # 6 + 3 steps

    ft = sgd_tuner(interrupt_at=9)
    with pytest.raises(KeyboardInterrupt):
        ft.fit(X, Y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    assert ft.history is not None and ft.history.epoch == [0] and len(ft.history.history["loss"]) == 1
    for key, value in reference.model.state_dict().items():  # the interrupted step was applied whole
        assert torch.equal(value, ft.model.state_dict()[key]), key
    out = capsys.readouterr().out
    assert "Training interrupted (KeyboardInterrupt) in epoch 2/3 after batch 3 of 6." in out
    assert "ft.history holds the 1 completed epoch of this fit" in out
    assert "callbacks=[BackupAndRestore('runs/backup', save_freq=100)]" in out


def test_ctrl_c_with_a_backup_says_to_run_again(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from finetunekit.callbacks import BackupAndRestore

    def interrupt(batch: int, logs: dict[str, float]) -> None:
        if batch == 1:
            signal.raise_signal(signal.SIGINT)

    ft = tuner()
    with pytest.raises(KeyboardInterrupt):
        callbacks = [BackupAndRestore(tmp_path / "bk"), LambdaCallback(on_train_batch_begin=interrupt)]
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=1, callbacks=callbacks)
    captured = capsys.readouterr()
    assert (
        f"Run the same fit again to resume from the last backup in {str(tmp_path / 'bk')!r}" in captured.out
    )
    assert ft.history is not None and ft.history.epoch == []


# -- item 8: the strategy applies from construction --------------------------------------------------------
def test_the_epoch0_plan_applies_at_construction_and_groups_show_it() -> None:
    from finetunekit.strategies import FrozenBackbone, GradualUnfreeze

    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", strategy=FrozenBackbone())
    trainable = sum(p.numel() for p in ft.model.parameters() if p.requires_grad)
    assert trainable == 16 * 3 + 3  # the head only, before compile or fit
    assert [(g.name, g.trainable) for g in ft.groups] == [("stem", False), ("stage1", False), ("head", True)]
    assert "trainable=False" in repr(ft.groups[0])
    gradual = FineTuner(
        TinyNet(num_classes=3), num_classes=3, device="cpu", strategy=GradualUnfreeze(every=1)
    )
    assert [g.trainable for g in gradual.groups] == [False, False, True]
    gradual.fit(X, Y, batch_size=16, epochs=2, verbose=0)
    assert [g.trainable for g in gradual.groups] == [False, True, True]  # the plan last applied
    assert all(g.trainable for g in tuner().groups)  # FullFineTune


# -- item 7 (part): steps_per_epoch and validation_freq, as Keras ------------------------------------------
def test_steps_per_epoch_trains_that_many_batches_per_epoch() -> None:
    counter = StepCounter()
    batches: list[int] = []
    cb = LambdaCallback(on_train_batch_begin=lambda batch, logs: batches.append(batch))
    history = tuner().fit(X, Y, batch_size=8, epochs=3, verbose=0, steps_per_epoch=2, callbacks=[counter, cb])
    assert counter.steps == 6 and batches == [0, 1] * 3 and history.epoch == [0, 1, 2]
    assert history.history["lr"][-1] == pytest.approx(tuner_lr_at_end(), rel=1e-6)


def tuner_lr_at_end() -> float:
    """The one-cycle schedule ends where it ends whatever the number of steps: it spans 3 x 2 steps."""
    ft = tuner()
    return ft.fit(X, Y, batch_size=24, epochs=3, verbose=0).history["lr"][-1]  # 2 batches per epoch


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", 7])
def test_a_bad_steps_per_epoch_raises_naming_it(bad: Any) -> None:
    with pytest.raises(ConfigError, match=f"steps_per_epoch={bad!r}"):
        tuner().fit(X, Y, batch_size=8, epochs=1, verbose=0, steps_per_epoch=bad)


@pytest.mark.parametrize(("freq", "validated"), [(1, [0, 1, 2, 3]), (2, [1, 3]), ([1, 4], [0, 3])])
def test_validation_freq_validates_on_those_epochs_only(freq: Any, validated: list[int]) -> None:
    seen: list[int] = []
    epochs_with_val: list[int] = []
    cbs = [
        LambdaCallback(on_test_begin=lambda logs: seen.append(len(epochs_with_val))),
        LambdaCallback(
            on_epoch_end=lambda epoch, logs: epochs_with_val.append(epoch) if "val_loss" in logs else None
        ),
        EarlyStopping(monitor="val_loss", patience=10),  # epochs without val_loss are skipped, not errors
    ]
    history = tuner().fit(X, Y, batch_size=8, epochs=4, verbose=0, validation_split=0.25,
                          validation_freq=freq, callbacks=cbs)  # fmt: skip
    assert epochs_with_val == validated and len(seen) == len(validated)
    assert len(history.history["val_loss"]) == len(validated) and len(history.history["loss"]) == 4


@pytest.mark.parametrize("bad", [0, [], [0, 2], "2", True])
def test_a_bad_validation_freq_raises_naming_it(bad: Any) -> None:
    with pytest.raises(ConfigError, match=r"validation_freq="):
        tuner().fit(X, Y, batch_size=8, epochs=1, verbose=0, validation_split=0.25, validation_freq=bad)
