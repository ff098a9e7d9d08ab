"""EarlyStopping follows Keras 3 semantics exactly; sequences are worked out by hand in the comments."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from callback_harness import FakeTuner, simulate_fit, val_losses

from finetunekit.callbacks import EarlyStopping
from finetunekit.errors import ConfigError, FineTuneKitError


def epochs_run(es: EarlyStopping, logs: list[dict[str, float]]) -> int:
    _, cbl, _ = simulate_fit([es], logs)
    return len(cbl.history.epoch)


def test_min_mode_stops_after_patience_epochs_without_improvement() -> None:
    es = EarlyStopping(patience=2)
    # best 1.0, 0.9; then 0.95 (wait 1), 0.96 (wait 2 -> stop at epoch 3); 0.5 never seen
    assert epochs_run(es, val_losses(1.0, 0.9, 0.95, 0.96, 0.5)) == 4
    assert es.stopped_epoch == 3
    assert es.best == 0.9
    assert es.best_epoch == 1


def test_patience_zero_never_stops_at_epoch_zero_and_stops_on_first_non_improvement() -> None:
    es = EarlyStopping(patience=0)
    assert epochs_run(es, val_losses(1.0, 0.5, 0.5, 0.1)) == 3  # equal is not better
    assert es.stopped_epoch == 2


def test_improving_sequence_never_stops() -> None:
    es = EarlyStopping(patience=0)
    assert epochs_run(es, val_losses(5, 4, 3, 2, 1)) == 5
    assert es.stopped_epoch == 0


def test_max_mode_via_auto_for_accuracy() -> None:
    es = EarlyStopping(monitor="val_accuracy", patience=1)
    logs = [{"val_accuracy": a} for a in (0.5, 0.6, 0.6, 0.7)]
    assert epochs_run(es, logs) == 3  # 0.6 does not beat 0.6 -> stop at epoch 2
    assert es.stopped_epoch == 2
    assert es.best == 0.6


def test_explicit_max_mode_on_a_loss_name() -> None:
    es = EarlyStopping(monitor="val_loss", mode="max", patience=0)
    assert epochs_run(es, val_losses(1.0, 2.0, 1.5)) == 3
    assert es.stopped_epoch == 2


@pytest.mark.parametrize(
    ("monitor", "direction"),
    [
        ("val_loss", "min"),
        ("loss", "min"),
        ("val_accuracy", "max"),
        ("acc", "max"),
        ("val_top5_acc", "max"),
        ("val_auc", "max"),
        ("val_f1", "max"),
        ("val_mae", "min"),
    ],
)
def test_auto_mode_direction(monitor: str, direction: str) -> None:
    es = EarlyStopping(monitor=monitor)
    assert es._is_improvement(2.0, 1.0) is (direction == "max")


@pytest.mark.parametrize("min_delta", [0.1, -0.1])  # Keras takes abs(min_delta)
def test_min_delta_in_min_mode(min_delta: float) -> None:
    es = EarlyStopping(min_delta=min_delta, patience=1)
    # 0.95 improves by only 0.05 < 0.1 -> wait 1 -> stop at epoch 1
    assert epochs_run(es, val_losses(1.0, 0.95, 0.8)) == 2
    assert es.stopped_epoch == 1
    es0 = EarlyStopping(min_delta=0, patience=1)
    assert epochs_run(es0, val_losses(1.0, 0.95, 0.8)) == 3


def test_min_delta_in_max_mode() -> None:
    es = EarlyStopping(monitor="val_accuracy", min_delta=0.1, patience=1)
    logs = [{"val_accuracy": a} for a in (0.5, 0.55, 0.7)]
    assert epochs_run(es, logs) == 2
    es2 = EarlyStopping(monitor="val_accuracy", min_delta=0.1, patience=1)
    logs = [{"val_accuracy": a} for a in (0.5, 0.61, 0.72)]  # both improve by > 0.1
    assert epochs_run(es2, logs) == 3


def test_baseline_not_reached_keeps_wait_counting() -> None:
    # Keras 3: improvements that miss the baseline do not reset wait.
    # e0 wait 1 (best 0.9), e1 wait 2 (best 0.8, returns), e2 wait 3 >= 2 -> stop at 2.
    es = EarlyStopping(patience=2, baseline=0.5)
    assert epochs_run(es, val_losses(0.9, 0.8, 0.85, 0.84)) == 3
    assert es.stopped_epoch == 2
    # Same sequence without baseline: waits reset on improvement, stop at 3.
    es_nb = EarlyStopping(patience=2)
    assert epochs_run(es_nb, val_losses(0.9, 0.8, 0.85, 0.84)) == 4
    assert es_nb.stopped_epoch == 3


def test_baseline_never_beaten_stops_after_patience() -> None:
    es = EarlyStopping(patience=1, baseline=0.5)
    assert epochs_run(es, val_losses(0.9, 0.9, 0.9)) == 2
    assert es.stopped_epoch == 1


def test_baseline_beaten_resets_wait() -> None:
    es = EarlyStopping(patience=2, baseline=0.5)
    # e0 wait 1, e1 beats baseline wait 0, e2 wait 1, e3 wait 2 -> stop at 3
    assert epochs_run(es, val_losses(0.9, 0.4, 0.45, 0.46, 0.47)) == 4
    assert es.stopped_epoch == 3


def test_start_from_epoch_ignores_warmup_epochs() -> None:
    es = EarlyStopping(patience=0, start_from_epoch=2)
    # epochs 0 and 1 are ignored; e2 sets best 3.0; e3 4.0 is worse -> stop at 3
    assert epochs_run(es, val_losses(1.0, 2.0, 3.0, 4.0, 5.0)) == 4
    assert es.stopped_epoch == 3
    es_now = EarlyStopping(patience=0)
    assert epochs_run(es_now, val_losses(1.0, 2.0, 3.0, 4.0, 5.0)) == 2


def test_stop_flag_is_set_on_the_tuner() -> None:
    es = EarlyStopping(patience=0)
    tuner, _, _ = simulate_fit([es], val_losses(1.0, 2.0))
    assert tuner.stop_training is True


def test_restore_best_weights_after_early_stop_is_bitwise() -> None:
    es = EarlyStopping(patience=2, restore_best_weights=True)
    tuner, _, snaps = simulate_fit([es], val_losses(1.0, 0.7, 0.8, 0.9, 0.1))
    assert es.stopped_epoch == 3 and es.best_epoch == 1
    final = tuner.model.state_dict()
    assert not torch.equal(snaps[3]["weight"], snaps[1]["weight"])  # the model did move on
    for key, value in snaps[1].items():
        assert torch.equal(final[key], value)


def test_restore_best_weights_also_without_early_stop() -> None:
    es = EarlyStopping(patience=10, restore_best_weights=True)
    tuner, _, snaps = simulate_fit([es], val_losses(1.0, 0.3, 0.5, 0.6))
    assert es.stopped_epoch == 0
    for key, value in snaps[1].items():
        assert torch.equal(tuner.model.state_dict()[key], value)


def test_without_restore_the_last_weights_stay() -> None:
    es = EarlyStopping(patience=1)
    tuner, _, snaps = simulate_fit([es], val_losses(1.0, 0.3, 0.5, 0.6))
    assert torch.equal(tuner.model.weight, snaps[-1]["weight"])


def test_missing_monitor_warns_once_naming_available_keys() -> None:
    es = EarlyStopping(monitor="val_loss", patience=0)
    logs = [{"loss": 1.0, "accuracy": 0.5}] * 3
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        n = epochs_run(es, logs)
    assert n == 3  # no monitor -> no stop
    messages = [str(w.message) for w in caught if "EarlyStopping" in str(w.message)]
    assert len(messages) == 1
    assert "'val_loss'" in messages[0]
    assert "Available metrics are: loss, accuracy" in messages[0]


def test_bad_mode_is_a_config_error_naming_value_and_options() -> None:
    with pytest.raises(ConfigError) as info:
        EarlyStopping(mode="maximum")
    message = str(info.value)
    assert "'maximum'" in message
    for option in ("'auto'", "'min'", "'max'"):
        assert option in message
    assert isinstance(info.value, FineTuneKitError) and isinstance(info.value, ValueError)


def test_negative_patience_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="patience=-1"):
        EarlyStopping(patience=-1)


def test_state_dict_round_trip_through_json_resumes_identically() -> None:
    seq = val_losses(1.0, 0.8, 0.85, 0.9, 0.95, 0.7)
    reference = EarlyStopping(patience=3)
    epochs_run(reference, seq)
    assert reference.stopped_epoch == 4

    first = EarlyStopping(patience=3)
    simulate_fit([first], seq[:3])
    state = json.loads(json.dumps(first.state_dict()))
    assert state == {"wait": 1, "best": 0.8, "stopped_epoch": 0, "best_epoch": 1}

    resumed = EarlyStopping(patience=3)
    resumed.load_state_dict(state)
    _, cbl, _ = simulate_fit([resumed], seq[3:], initial_epoch=3)  # on_train_begin keeps loaded state
    assert resumed.stopped_epoch == reference.stopped_epoch
    assert cbl.history.epoch == [3, 4]
    assert resumed.state_dict() == reference.state_dict()


def test_new_fit_without_loaded_state_resets() -> None:
    es = EarlyStopping(patience=0)
    epochs_run(es, val_losses(1.0, 2.0))
    assert es.stopped_epoch == 1
    assert epochs_run(es, val_losses(3.0, 2.0, 1.0)) == 3
    assert es.stopped_epoch == 0 and es.best == 1.0


def test_verbose_messages(capsys: pytest.CaptureFixture[str]) -> None:
    es = EarlyStopping(patience=0, verbose=1, restore_best_weights=True)
    simulate_fit([es], val_losses(1.0, 2.0), tuner=FakeTuner())
    out = capsys.readouterr().out
    assert "Epoch 2: early stopping" in out
    assert "Restoring model weights from the end of the best epoch: 1." in out
