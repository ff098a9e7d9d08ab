"""Every value read back from ``config.json`` / ``training.json`` is type- and range-checked.

A checksum only proves a file is what its manifest says, and anyone can recompute one. So values are
validated too, before any of them is used: a NaN mean (all-NaN predictions), ``input_size`` 40000
(gigabytes per batch), a missing key, ``Infinity``, a string for a number, deep nesting, a step beyond
the epoch or a negative epoch each raise :class:`CheckpointError` naming the file and the key, instead
of a raw KeyError deep in the loader or silently wrong results.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from finetunekit.errors import CheckpointError

MAX_IMAGE_SIDE = 4096  # pixels; one 4096x4096x3 float input is already 200 MB
MAX_CLASSES = 1_000_000
MAX_CHANNELS = 1024
MAX_DEPTH = 32
MAX_COUNT = 10**12  # epochs, steps, samples
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
_FIX = (
    "The file was altered or written by another program; save the model again, or use an earlier checkpoint."
)


class Reader:
    """Typed access to one parsed JSON file whose errors name the file and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, value: Any, expected: str) -> CheckpointError:
        shown = repr(value)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        return CheckpointError(f"{self.source}: {key}={shown} is invalid; expected {expected}. {_FIX}")

    def need(self, d: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in d:
            raise CheckpointError(f"{self.source}: the key {path or key!r} is missing. {_FIX}")
        return d[key]

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, value, "a JSON object")
        return value

    def integer(self, value: Any, key: str, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise self.fail(key, value, f"an int in [{lo}, {hi}]")
        return value

    def number(self, value: Any, key: str, lo: float, hi: float, *, above: bool = False) -> float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or not (lo < value if above else lo <= value) or value > hi:
            raise self.fail(key, value, f"a finite number in {'(' if above else '['}{lo}, {hi}]")
        return float(value)

    def string(self, value: Any, key: str, choices: tuple[str, ...] = (), max_len: int = 1024) -> str:
        if not isinstance(value, str) or len(value) > max_len or (choices and value not in choices):
            raise self.fail(key, value, f"one of {list(choices)}" if choices else "a string")
        return value

    def items(self, value: Any, key: str, lo: int, hi: int) -> list[Any]:
        if not isinstance(value, list) or not lo <= len(value) <= hi:
            raise self.fail(key, value, f"a list of {lo} to {hi} entries")
        return value


def parse_json(data: bytes, source: str, finite: bool = True) -> Any:
    """JSON bytes -> value; a syntax error, bad UTF-8, a huge int or deep nesting: CheckpointError.
    ``finite``: NaN / Infinity anywhere are refused too (training.json may log a NaN loss)."""
    try:
        value = json.loads(data)
    except RecursionError as e:
        raise CheckpointError(
            f"{source} nests deeper than Python can parse; expected plain JSON. {_FIX}"
        ) from e
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise CheckpointError(f"{source} is not valid JSON ({str(e)[:120]}). {_FIX}") from e
    check_tree(value, Reader(source), finite)
    return value


def check_tree(value: Any, r: Reader, finite: bool, key: str = "", depth: int = 0) -> None:
    """No nesting beyond MAX_DEPTH and (``finite``) no NaN/Infinity, which JSON's grammar lacks."""
    if depth > MAX_DEPTH:
        raise r.fail(key, "...", f"at most {MAX_DEPTH} levels of nesting")
    if finite and isinstance(value, float) and not math.isfinite(value):
        raise r.fail(key, value, "a finite number (NaN and Infinity are not JSON)")
    if isinstance(value, dict):
        for k, v in value.items():
            check_tree(v, r, finite, f"{key}.{k}" if key else str(k), depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            check_tree(v, r, finite, f"{key}[{i}]", depth + 1)


def finite_tensors(state: Mapping[str, Any], source: str) -> None:
    """Weights with NaN (or infinity outside attention masks) give NaN outputs for every input."""
    import torch

    for key, t in state.items():
        if not t.is_floating_point() or bool(torch.isfinite(t).all()):
            continue
        if "mask" in key.rsplit(".", 1)[-1] and not bool(torch.isnan(t).any()):
            continue  # -inf in an attention mask buffer is how masks are written
        raise CheckpointError(
            f"{source}: the tensor {key!r} holds NaN or infinite values, so every prediction would be NaN. "
            f"{_FIX}"
        )


# -- config.json -----------------------------------------------------------------------------------
def model_config(config: Any, source: str, format_name: str, format_version: int) -> dict[str, Any]:
    """``config`` checked key by key; returns it unchanged."""
    r = Reader(source)
    cfg = r.mapping(config, "config")
    if cfg.get("format") != format_name:
        raise r.fail("format", cfg.get("format"), f"{format_name!r} (a finetunekit model config)")
    version = r.integer(r.need(cfg, "format_version", ""), "format_version", 1, 10**6)
    if version > format_version:
        raise CheckpointError(
            f"{source} has format_version {version}; this finetunekit reads up to {format_version}. "
            "Upgrade finetunekit to load it."
        )
    num_classes = r.integer(r.need(cfg, "num_classes", ""), "num_classes", 1, MAX_CLASSES)
    in_chans = r.integer(r.need(cfg, "in_chans", ""), "in_chans", 1, MAX_CHANNELS)
    r.string(r.need(cfg, "spec", ""), "spec", max_len=256)
    _backbone(r, r.mapping(r.need(cfg, "backbone", ""), "backbone"), in_chans)
    _data_config(r, r.mapping(r.need(cfg, "data_config", ""), "data_config"))
    names = cfg.get("class_names")
    if names is not None:
        for i, name in enumerate(r.items(names, "class_names", 1, num_classes)):
            r.string(name, f"class_names[{i}]")
    strategy = r.mapping(r.need(cfg, "strategy", ""), "strategy")
    r.string(r.need(strategy, "name", "strategy.name"), "strategy.name", max_len=256)
    return cfg


def _image_size(r: Reader, value: Any, key: str) -> None:
    if value is not None:
        for i, side in enumerate(r.items(value, key, 2, 2)):
            r.integer(side, f"{key}[{i}]", 1, MAX_IMAGE_SIDE)


def _backbone(r: Reader, b: dict[str, Any], in_chans: int) -> None:
    registry = r.string(r.need(b, "registry", "backbone.registry"), "backbone.registry",
                        ("timm", "torchvision", "module"))  # fmt: skip
    if registry == "module":
        r.string(r.need(b, "class", "backbone.class"), "backbone.class", max_len=512)
        if b.get("head") is not None:
            r.string(b["head"], "backbone.head", max_len=512)
    else:
        r.string(r.need(b, "name", "backbone.name"), "backbone.name", max_len=256)
        if "in_chans" in b and r.integer(b["in_chans"], "backbone.in_chans", 1, MAX_CHANNELS) != in_chans:
            raise r.fail("backbone.in_chans", b["in_chans"], f"the top-level in_chans={in_chans}")
        _image_size(r, b.get("image_size"), "backbone.image_size")
    groups = b.get("groups")
    if groups is not None:
        for i, g in enumerate(r.items(groups, "backbone.groups", 1, 100_000)):
            if isinstance(g, list):
                for j, s in enumerate(r.items(g, f"backbone.groups[{i}]", 1, 100_000)):
                    r.string(s, f"backbone.groups[{i}][{j}]")
            else:
                r.string(g, f"backbone.groups[{i}]")


def _data_config(r: Reader, d: dict[str, Any]) -> None:
    size = r.items(r.need(d, "input_size", "data_config.input_size"), "data_config.input_size", 3, 3)
    r.integer(size[0], "data_config.input_size[0]", 1, MAX_CHANNELS)
    for i in (1, 2):
        r.integer(size[i], f"data_config.input_size[{i}]", 1, MAX_IMAGE_SIDE)
    for key, lo, hi in (("mean", -10.0, 10.0), ("std", 1e-4, 100.0)):
        values = r.items(r.need(d, key, f"data_config.{key}"), f"data_config.{key}", 1, MAX_CHANNELS)
        for i, v in enumerate(values):
            r.number(v, f"data_config.{key}[{i}]", lo, hi)
    if "interpolation" in d:
        r.string(d["interpolation"], "data_config.interpolation", INTERPOLATIONS)
    if "crop_pct" in d:
        r.number(d["crop_pct"], "data_config.crop_pct", 0.0, 2.0, above=True)
