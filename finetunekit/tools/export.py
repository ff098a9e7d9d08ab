"""Export a FineTuner for deployment: ONNX, TorchScript or a ``torch.export`` ExportedProgram.

With ``preprocessing=True`` the file takes what a camera or PIL gives, uint8 N×H×W×C of any height
and width, and returns class probabilities: the backbone's resize (antialiased, its own interpolation),
``/255``, mean/std normalization and the calibrated softmax temperature are inside the graph, so a
deployment needs no copy of the preprocessing (the mismatch behind most "the exported model is worse"
reports). Without it the file takes the normalized float N×C×H×W batch ``fit`` trains on. The batch axis
is always dynamic. After writing, the file is loaded back with its own runtime (onnxruntime for ONNX
when installed) and run on a batch of another size than the one traced; the largest difference from
the eager model is in the report, and above ``atol`` the export fails instead of shipping a wrong model.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from finetunekit.data.transforms import channel_stats
from finetunekit.errors import ConfigError, FineTuneKitError, MissingDependencyError

FORMATS = ("onnx", "torchscript", "exported_program")
INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


class ExportError(FineTuneKitError, RuntimeError):
    """The exported file does not reproduce the eager model."""


@dataclass(frozen=True)
class ExportReport:
    """Where the file is, what it takes, and how far its outputs are from the eager model's."""

    path: str
    format: str
    preprocessing: bool
    input_name: str
    input_shape: tuple[str | int, ...]  # "batch" / "height" / "width" mark dynamic axes
    input_dtype: str
    checked_with: str | None  # the runtime that ran the file, None when none is installed (ONNX)
    max_abs_diff: float | None  # exported file vs the eager wrapped model, same input
    max_abs_diff_vs_predict: float | None  # eager wrapped model vs ft.predict on the same uint8 images
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Preprocess(nn.Module):
    """uint8 N×H×W×C -> the backbone's normalized N×C×H×W at its input size, inside the graph.

    The resize runs in float and is clamped to [0, 255] after each pass, as ``predict``'s uint8 resize
    is, so the two agree to within a grey level or two (measured in tests/tools/test_export.py); it is
    not rounded, so ONNX Runtime and PyTorch cannot round a tie differently.
    """

    def __init__(self, data_config: Any, in_chans: int) -> None:
        super().__init__()
        self.size = (int(data_config.input_size[1]), int(data_config.input_size[2]))
        mode = str(data_config.interpolation)
        self.mode = mode if mode in ("bilinear", "bicubic", "nearest") else "bilinear"
        std, mean = (
            channel_stats(tuple(data_config.std), in_chans),
            channel_stats(tuple(data_config.mean), in_chans),
        )
        self.register_buffer("scale", (1.0 / (255.0 * std)).unsqueeze(0))
        self.register_buffer("shift", (-mean / std).unsqueeze(0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        if self.mode == "nearest":
            x = nn.functional.interpolate(x, size=self.size, mode="nearest")
        elif self.mode == "bicubic":  # as uint8 bicubic: width, clamp (overshoot), then height
            x = self._resize(x, (x.shape[-2], self.size[1]))
            x = self._resize(x, self.size)
        else:
            x = self._resize(x, self.size)
        scale, shift = self.get_buffer("scale"), self.get_buffer("shift")
        return x * scale + shift

    def _resize(self, x: torch.Tensor, size: tuple[Any, Any]) -> torch.Tensor:
        x = nn.functional.interpolate(x, size=size, mode=self.mode, align_corners=False, antialias=True)
        return x.clamp(0.0, 255.0)  # no round(): a .5 tie would flip between runtimes


class Deployable(nn.Module):
    """(optional preprocessing) -> model -> softmax(logits / temperature)."""

    def __init__(self, model: nn.Module, temperature: float, preprocess: nn.Module | None) -> None:
        super().__init__()
        self.preprocess = preprocess
        self.model = model
        self.temperature = float(temperature)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images) if self.preprocess is not None else images
        return torch.softmax(self.model(x).float() / self.temperature, dim=1)


def _check_format(format: Any) -> str:
    if format not in FORMATS:
        raise ConfigError(
            f"format={format!r} is unknown; expected one of {list(FORMATS)}, e.g. format='onnx'"
        )
    return str(format)


def _require(module: str, what: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"{what} needs the {module!r} package, which is not installed. "
            'Fix: pip install "finetunekit[export]" (onnx, onnxscript, onnxruntime)'
        )


def _example(ft: Any, preprocessing: bool, batch: int, extra: int, seed: int) -> torch.Tensor:
    """A batch to trace (extra=0) or to check with (another batch size and, with preprocessing, size)."""
    g = torch.Generator().manual_seed(seed)
    _, h, w = (int(v) for v in ft.data_config.input_size)
    if preprocessing:
        return torch.randint(
            0, 256, (batch, h + extra, w + 2 * extra, ft.in_chans), generator=g, dtype=torch.uint8
        )
    return torch.randn(batch, ft.in_chans, h, w, generator=g)


def _dynamic_shapes(preprocessing: bool) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch", min=1, max=4096)
    if not preprocessing:
        return {"images": {0: batch}}
    return {"images": {0: batch, 1: torch.export.Dim("height", min=8, max=8192),
                       2: torch.export.Dim("width", min=8, max=8192)}}  # fmt: skip


def _write(module: nn.Module, example: torch.Tensor, path: Path, format: str, preprocessing: bool) -> None:
    dynamic = _dynamic_shapes(preprocessing)
    if format == "onnx":
        _require("onnx", "format='onnx'")
        _require("onnxscript", "format='onnx'")
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, verbose=False)  # fmt: skip
    elif format == "exported_program":
        program = torch.export.export(module, (example,), dynamic_shapes=dynamic)
        torch.export.save(program, str(path))
    else:
        with torch.no_grad():
            traced = torch.jit.trace(module, (example,), check_trace=False)
        torch.jit.save(traced, str(path))


def _run_file(path: Path, format: str, x: torch.Tensor) -> tuple[np.ndarray | None, str | None]:
    """The exported file's output on ``x``, run by its own runtime."""
    if format == "onnx":
        if importlib.util.find_spec("onnxruntime") is None:
            import onnx

            onnx.checker.check_model(str(path))  # at least a valid graph
            return None, None
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {INPUT_NAME: x.numpy()})[0], "onnxruntime"
    if format == "exported_program":
        loaded = torch.export.load(str(path)).module()
        with torch.no_grad():
            return loaded(x).numpy(), "torch.export.load"
    scripted = torch.jit.load(str(path))
    with torch.no_grad():
        return scripted(x).numpy(), "torch.jit.load"


def _vs_predict(ft: Any, module: nn.Module, x: torch.Tensor) -> float:
    """How far the in-graph preprocessing is from predict's own pipeline on the same uint8 images."""
    with torch.no_grad():
        eager = module(x).numpy()
    return float(np.abs(eager - ft.predict(x.numpy(), batch_size=len(x))).max())


def export(
    ft: Any, path: str | os.PathLike[str], *, format: str = "onnx", preprocessing: bool = True,
    atol: float = 1e-4, check: bool = True,
) -> ExportReport:  # fmt: skip
    """Write ``ft``'s evaluation model to ``path`` and (``check=True``) verify the file against it."""
    format = _check_format(format)
    if not isinstance(preprocessing, bool):
        raise ConfigError(f"preprocessing={preprocessing!r}; expected True (uint8 N×H×W×C in) or False")
    if isinstance(atol, bool) or not isinstance(atol, (int, float)) or not atol >= 0:
        raise ConfigError(f"atol={atol!r} is invalid; expected a float >= 0, e.g. 1e-4")
    if format == "exported_program" and Path(path).suffix != ".pt2":
        raise ConfigError(
            f"path={str(path)!r}: torch.export.save writes .pt2 archives; expected a path ending in .pt2, "
            f"e.g. {str(Path(path).with_suffix('.pt2'))!r}"
        )
    start = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(getattr(ft, "eval_model", ft.model)).cpu().eval()
    prep = Preprocess(ft.data_config, ft.in_chans) if preprocessing else None
    module = Deployable(model, float(getattr(ft, "temperature", 1.0)), prep).eval()
    _write(module, _example(ft, preprocessing, 2, 0, seed=0), path, format, preprocessing)
    diff = versus = runtime = None
    if check:
        x = _example(ft, preprocessing, 3, 8 if preprocessing else 0, seed=1)
        out, runtime = _run_file(path, format, x)
        if out is not None:
            with torch.no_grad():
                diff = float(np.abs(out - module(x).numpy()).max())
            if diff > atol:
                raise ExportError(
                    f"the exported {format} file {str(path)!r} differs from the eager model by {diff:.3g} "
                    f"(> atol={atol:g}) on a batch of 3; expected agreement. The file is kept for "
                    "inspection; try another format, or pass a larger atol if this difference is acceptable."
                )
        versus = _vs_predict(ft, module, x) if preprocessing else None
    _, h, w = (int(v) for v in ft.data_config.input_size)
    shape: tuple[str | int, ...] = (
        ("batch", "height", "width", ft.in_chans) if preprocessing else ("batch", ft.in_chans, h, w)
    )
    return ExportReport(
        path=str(path), format=format, preprocessing=preprocessing, input_name=INPUT_NAME, input_shape=shape,
        input_dtype="uint8" if preprocessing else "float32", checked_with=runtime, max_abs_diff=diff,
        max_abs_diff_vs_predict=versus, seconds=time.perf_counter() - start,
    )  # fmt: skip
