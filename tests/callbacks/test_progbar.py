"""ProgbarLogger output formats; cheap per step."""

from __future__ import annotations

import re

import pytest
from callback_harness import simulate_fit

from finetunekit.callbacks import CallbackList, ProgbarLogger
from finetunekit.callbacks import progbar as progbar_module

EPOCH_LOGS = {"loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.7, "lr": 1e-4}


def test_verbose2_prints_one_keras_line_per_epoch(capsys: pytest.CaptureFixture[str]) -> None:
    simulate_fit([], [EPOCH_LOGS, EPOCH_LOGS], verbose=2)
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2
    pattern = (
        r"Epoch {n}/2 - \d+\.\ds - loss: 0\.5000 - accuracy: 0\.7500 - val_loss: 0\.6000"
        r" - val_accuracy: 0\.7000 - lr: 1\.0000e-04"
    )
    for n, line in enumerate(lines, start=1):
        assert re.fullmatch(pattern.format(n=n), line), line
    assert captured.err == ""  # no bar in verbose=2


def test_verbose1_with_unknown_steps_shows_epoch_and_final_logs(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    cbl = CallbackList([], add_progbar=True, verbose=1, epochs=3, steps=None)
    cbl.on_train_begin()
    cbl.on_epoch_begin(0)
    for batch in range(5):
        cbl.on_train_batch_begin(batch)
        cbl.on_train_batch_end(batch, {"loss": 0.5})
    cbl.on_epoch_end(0, EPOCH_LOGS)
    cbl.on_train_end()
    err = capsys.readouterr().err
    assert "Epoch 1/3" in err
    assert "5step" in err.replace(" ", "")
    assert "val_loss=0.6" in err and "val_accuracy=0.7" in err


def test_verbose1_known_steps_runs_full_fit(capsys: pytest.CaptureFixture[str]) -> None:
    simulate_fit([], [EPOCH_LOGS] * 2, steps=4, verbose=1)
    err = capsys.readouterr().err
    assert "Epoch 2/2" in err and "4/4" in err


def test_postfix_is_not_formatted_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []
    real = progbar_module.bar_postfix

    def counting(logs: dict[str, float] | None, width: int) -> str:
        calls.append(logs)
        return real(logs, width)

    monkeypatch.setattr(progbar_module, "bar_postfix", counting)
    bar = ProgbarLogger(mininterval=3600)
    cbl = CallbackList([bar], verbose=1, epochs=1, steps=200)
    cbl.on_epoch_begin(0)
    for batch in range(200):
        cbl.on_train_batch_end(batch, {"loss": 0.5})
    cbl.on_epoch_end(0, EPOCH_LOGS)
    assert len(calls) == 1  # only the epoch-end summary


def test_train_end_closes_a_bar_left_open_by_a_mid_epoch_stop() -> None:
    bar = ProgbarLogger()
    cbl = CallbackList([bar], verbose=1, epochs=1, steps=10)
    cbl.on_epoch_begin(0)
    cbl.on_train_batch_end(0, {"loss": 1.0})
    cbl.on_train_end()
    assert bar._bar is None


def test_format_logs() -> None:
    text = progbar_module.format_logs({"loss": 0.0, "lr": 3e-5, "n": 2, "size": 32, "tag": "x"})
    assert text == "loss: 0.0000 - lr: 3.0000e-05 - n: 2.0000 - tag: x"


def visible_lines(err: str) -> list[str]:
    """Each state tqdm drew (it redraws a line after a carriage return), trailing blanks removed."""
    return [line.rstrip() for line in err.replace("\r", "\n").splitlines() if line.strip()]


@pytest.mark.parametrize("columns", [80, 100, 120])
def test_the_finished_epoch_bar_shows_val_metrics_within_the_terminal_width(
    columns: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    logs = {"loss": 0.41234, "accuracy": 0.875, "lr": 1e-4, "val_loss": 0.44123, "val_accuracy": 0.8667,
            "gap_loss": 0.03, "gap_accuracy": 0.01}  # fmt: skip
    simulate_fit([], [logs] * 2, steps=100, verbose=1)
    lines = visible_lines(capsys.readouterr().err)
    finished = [line for line in lines if "100/100" in line]
    assert finished and all(len(line) <= columns for line in lines)
    for line in finished:
        assert "val_loss=0.4412" in line and "val_accuracy=0.8667" in line
        assert "lr=" not in line and "gap_" not in line
    if columns >= 120:  # all four fit; at 100 train accuracy gives way
        assert "loss=0.4123" in finished[-1] and " accuracy=0.875" in finished[-1]


def test_bar_postfix_picks_validation_first_and_keeps_the_logs_order() -> None:
    logs = {"loss": 0.5, "accuracy": 0.75, "val_loss": 0.6, "val_accuracy": 0.7, "lr": 1e-4}
    assert progbar_module.bar_postfix(logs, 200) == "loss=0.5 accuracy=0.75 val_loss=0.6 val_accuracy=0.7"
    assert progbar_module.bar_postfix(logs, 40) == "loss=0.5 val_loss=0.6 val_accuracy=0.7"
    assert progbar_module.bar_postfix(logs, 12) == "val_loss=0.6"
    assert progbar_module.bar_postfix({"loss": 1.0, "n": 3}, 80) == "loss=1.0 n=3"
