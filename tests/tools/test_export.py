"""export(): ONNX / TorchScript / ExportedProgram files with a dynamic batch (and, with preprocessing,
dynamic height and width) that reproduce the eager model, across real timm and torchvision architectures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from finetunekit import FineTuner
from finetunekit.errors import ConfigError
from finetunekit.tools import export as export_mod

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _sharp(spec: str, size: int = 48) -> FineTuner:
    """pretrained=False with a large head, so probabilities are far from uniform and errors would show."""
    torch.manual_seed(0)
    ft = FineTuner(spec, num_classes=5, pretrained=False, image_size=size, device="cpu")
    params = dict(ft.model.named_parameters())
    with torch.no_grad():
        for name in ft.groups[-1].param_names:
            params[name].normal_(0, 2.0)
        size = ft.data_config.input_size
        logits = ft.model.eval()(torch.randn(8, *size))
    ft.temperature = float(logits.std())  # logits / T ~ unit scale: probabilities far from 0, 1 and uniform
    return ft


def _images(n: int, h: int, w: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _smooth_images(n: int, h: int, w: int, seed: int = 3) -> np.ndarray:
    """Photo-like (smooth) images: coarse noise upsampled, so a grey level of resize rounding is noise."""
    coarse = torch.from_numpy(_images(n, 6, 6, seed)).permute(0, 3, 1, 2).float()
    fine = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    return fine.round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize(
    "spec",
    ["timm/resnet18", "timm/efficientnet_lite0", "torchvision/mobilenet_v3_small", "torchvision/resnet18"],
)
def test_onnx_with_preprocessing_matches_predict_at_any_batch_and_size(spec: str, tmp_path: Path) -> None:
    ft = _sharp(spec)
    ft.temperature *= 1.7  # the temperature is in the graph too
    report = ft.export(tmp_path / "m.onnx", format="onnx")
    assert report.checked_with == "onnxruntime" and report.max_abs_diff is not None
    assert report.max_abs_diff < 1e-4
    assert report.input_shape == ("batch", "height", "width", 3)
    session = onnxruntime.InferenceSession(report.path, providers=["CPUExecutionProvider"])
    assert [d for d in session.get_inputs()[0].shape[:3]] == ["batch", "height", "width"]
    for n, h, w, tol in ((1, 48, 48, 1e-4), (5, 61, 37, 0.05)):  # no resize: exact; resize: grey levels
        x = _smooth_images(n, h, w)
        out = session.run(None, {"images": x})[0]
        expected = ft.predict(x)
        assert out.shape == (n, 5)
        np.testing.assert_allclose(out.sum(1), 1.0, atol=1e-5)
        assert np.abs(out - expected).max() < tol
        np.testing.assert_array_equal(out.argmax(1), expected.argmax(1))


@pytest.mark.parametrize(
    "fmt,suffix", [("torchscript", ".pt"), ("exported_program", ".pt2"), ("onnx", ".onnx")]
)
def test_every_format_without_preprocessing_takes_normalized_batches(
    fmt: str, suffix: str, tmp_path: Path
) -> None:
    ft = _sharp("timm/resnet18", size=32)
    report = ft.export(tmp_path / f"m{suffix}", format=fmt, preprocessing=False)
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert report.input_shape == ("batch", 3, 32, 32) and report.input_dtype == "float32"
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = torch.softmax(ft.model.eval()(x) / ft.temperature, 1).numpy()
    if fmt == "torchscript":
        out = torch.jit.load(report.path)(x).detach().numpy()
    elif fmt == "exported_program":
        out = torch.export.load(report.path).module()(x).detach().numpy()
    else:
        session = onnxruntime.InferenceSession(report.path, providers=["CPUExecutionProvider"])
        out = session.run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(out, expected, atol=1e-4)


def test_a_file_that_disagrees_fails_the_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ft = _sharp("timm/resnet18", size=32)
    real = export_mod._run_file

    def off_by_a_bit(path: Path, fmt: str, x: torch.Tensor) -> tuple[Any, str | None]:
        out, runtime = real(path, fmt, x)
        return out + 0.01, runtime

    monkeypatch.setattr(export_mod, "_run_file", off_by_a_bit)
    with pytest.raises(export_mod.ExportError, match="differs from the eager model by 0.01"):
        ft.export(tmp_path / "m.pt", format="torchscript")


def test_bad_arguments_name_the_value(tmp_path: Path) -> None:
    ft = _sharp("timm/resnet18", size=32)
    with pytest.raises(ConfigError, match="format='tflite'"):
        ft.export(tmp_path / "m", format="tflite")
    with pytest.raises(ConfigError, match="ending in .pt2"):
        ft.export(tmp_path / "m.pt", format="exported_program")
    with pytest.raises(ConfigError, match="preprocessing='yes'"):
        ft.export(tmp_path / "m.onnx", preprocessing="yes")  # type: ignore[arg-type]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_in_graph_resize_is_within_one_grey_level_of_predicts(interpolation: str) -> None:
    from finetunekit.backbones.base import DataConfig
    from finetunekit.data.transforms import ImageTransform

    config = DataConfig(input_size=(3, 48, 48), interpolation=interpolation, mean=(0, 0, 0), std=(1, 1, 1))
    pipeline, graph = ImageTransform(config, 3, augment=False), export_mod.Preprocess(config, 3)
    for h, w in ((61, 37), (24, 24), (200, 150)):
        x = torch.from_numpy(_images(2, h, w))
        expected = torch.stack([pipeline(image.permute(2, 0, 1)) for image in x])
        assert (graph(x) - expected).abs().max().item() * 255 <= 2.0 + 1e-3  # two grey levels at worst
