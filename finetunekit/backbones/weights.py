"""Load a local weights file or state dict into a backbone: all of it or nothing, classifier excluded.

Matching goes from strict to lenient: exact keys, keys with wrapper prefixes stripped
(``module.`` from DDP, ``model.`` / ``backbone.`` from training frameworks), and last, by position,
only when every tensor's shape agrees in order. Position matching is what makes third-party exports
(e.g. lukemelas-style EfficientNet-Lite0 with ``_conv_stem`` keys) usable in the timm architecture
they were made for. A partial load is never silent: anything left over raises
:class:`WeightsMismatchError` with the first mismatches.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ..errors import ConfigError, WeightsMismatchError

logger = logging.getLogger("finetunekit")

PREFIXES = ("module.", "model.", "backbone.")
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
OPTIONAL_SUFFIX = "num_batches_tracked"  # old checkpoints lack it; its value does not matter
WeightsSource = str | os.PathLike[str] | Mapping[str, Tensor]


def read_state_dict(source: WeightsSource) -> tuple[dict[str, Tensor], str]:
    """Tensors from a path or mapping, unwrapped from ``{"state_dict": ...}`` / ``{"model": ...}``."""
    if isinstance(source, Mapping):
        return _unwrap(source, "the given state dict"), "the given state dict"
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            f"weights={str(source)!r}: no such file. Expected a .pth/.pt/.safetensors file or a state "
            "dict; check the path, or use weights=None."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), str(path)), str(path)
        except Exception as e:  # SafetensorError, OSError, ...: no common base class
            raise WeightsMismatchError(
                f"weights={str(path)!r} is not a valid safetensors file ({type(e).__name__}: "
                f"{str(e)[:160]}); by its first bytes it is {sniff(path)}. Fix: pass the file under the "
                "suffix of what it is (.pth/.pt for torch.save files), or re-save it with "
                "safetensors.torch.save_file(model.state_dict(), path)."
            ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors have no common base class
        raise WeightsMismatchError(
            f"weights={str(path)!r} could not be read safely ({type(e).__name__}: {str(e)[:200]}); by its "
            f"first bytes it is {sniff(path)}. finetunekit only loads tensors "
            "(torch.load(weights_only=True)), never pickled objects. Fix: re-save it as "
            "torch.save(model.state_dict(), path) or as .safetensors (and name it by what it is)."
        ) from e
    return _unwrap(obj, str(path)), str(path)


def sniff(path: Path) -> str:
    """What a weights file is by its first bytes, whatever its suffix says."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    if not head:
        return "empty"
    if head.startswith(b"PK\x03\x04"):
        return "a torch.save (zip) file"
    if head[:1] == b"\x80":
        return "a pickle"
    if len(head) > 8 and head[8:9] == b"{":
        return "a safetensors file (possibly truncated)"
    return "of an unknown kind"


def _unwrap(obj: object, label: str) -> dict[str, Tensor]:
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        if all(isinstance(v, Tensor) for v in obj.values()) and obj:
            return {str(k): v for k, v in obj.items()}
        obj = next((obj[k] for k in WRAPPER_KEYS if k in obj), None)
    raise WeightsMismatchError(
        f"{label} holds no state dict (got {type(obj).__name__}). Expected a mapping of parameter "
        f"names to tensors, possibly wrapped as {{'state_dict': ...}} or {{'model': ...}}. "
        "Fix: save model.state_dict()."
    )


def strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for key, value in sd.items():
        while key.startswith(PREFIXES):
            key = key.split(".", 1)[1]
        out[key] = value
    return out


def _stem_fits(key: str, want: Tensor, got: Tensor, stem_key: frozenset[str]) -> bool:
    """A stem conv that differs only in input channels can be adapted (timm ``adapt_input_conv``)."""
    return (
        key in stem_key
        and want.ndim == got.ndim == 4
        and want.shape[0] == got.shape[0]
        and want.shape[2:] == got.shape[2:]
    )


def _square_split(src_tokens: int, dst_tokens: int) -> tuple[int, int] | None:
    """(prefix tokens, target grid side) if both token counts are ``prefix + side**2``."""
    for prefix in range(9):  # class / distillation / register tokens
        a, b = round((src_tokens - prefix) ** 0.5), round((dst_tokens - prefix) ** 0.5)
        if a > 0 and b > 0 and a * a == src_tokens - prefix and b * b == dst_tokens - prefix:
            return prefix, b
    return None


def _resample_pos_embed(key: str, want: Tensor, got: Tensor) -> Tensor | None:
    """A ViT position embedding saved at another (square) image size, resampled as timm does when
    it loads its own weights with ``img_size=``: so ``weights=`` files work with ``image_size``."""
    if not key.endswith(("pos_embed", "pos_embedding")) or want.ndim != 3 or got.ndim != 3:
        return None
    if want.shape[0] != got.shape[0] or want.shape[2] != got.shape[2]:
        return None
    split = _square_split(got.shape[1], want.shape[1])
    if split is None:
        return None
    from timm.layers import resample_abs_pos_embed

    prefix, side = split
    return resample_abs_pos_embed(got, new_size=[side, side], num_prefix_tokens=prefix)


def _fit(key: str, want: Tensor, got: Tensor, stem_key: frozenset[str]) -> Tensor | None:
    if want.shape == got.shape:
        return got
    if _stem_fits(key, want, got, stem_key):
        from timm.models import adapt_input_conv

        return adapt_input_conv(want.shape[1], got)
    return _resample_pos_embed(key, want, got)


def _by_key(
    body: dict[str, Tensor], head: set[str], src: dict[str, Tensor], stem: frozenset[str]
) -> tuple[dict[str, Tensor], list[str]]:
    mapped: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, want in body.items():
        if key not in src:
            if not key.endswith(OPTIONAL_SUFFIX):
                problems.append(f"{key!r}: expected {tuple(want.shape)}, missing")
            continue
        fitted = _fit(key, want, src[key], stem)
        if fitted is None:
            problems.append(f"{key!r}: expected {tuple(want.shape)}, got {tuple(src[key].shape)}")
        else:
            mapped[key] = fitted
    problems += [f"{k!r}: unexpected (not in this model)" for k in src if k not in body and k not in head]
    return mapped, problems


def _by_position(
    target: dict[str, Tensor], head: set[str], src: dict[str, Tensor], stem: frozenset[str]
) -> tuple[dict[str, Tensor], list[str]]:
    body_keys = [k for k in target if k not in head]
    items = list(src.items())
    if len(items) == len(target):  # the source has a classifier where ours is: drop those slots
        items = [item for k, item in zip(target, items, strict=True) if k not in head]
    if len(items) != len(body_keys):
        return {}, [
            f"{len(src)} tensors given, expected {len(body_keys)} (or {len(target)} with a classifier)"
        ]
    mapped: dict[str, Tensor] = {}
    problems = []
    for key, (src_key, got) in zip(body_keys, items, strict=True):
        fitted = _fit(key, target[key], got, stem)
        if fitted is None:
            problems.append(
                f"{key!r}: expected {tuple(target[key].shape)}, got {src_key!r} {tuple(got.shape)}"
            )
        else:
            mapped[key] = fitted
    return mapped, problems


def stem_keys(model: nn.Module) -> frozenset[str]:
    """Weights of the input convolution(s): timm's ``pretrained_cfg["first_conv"]`` (CrossViT has two)
    and the first ``nn.Conv2d`` in module order (not state-dict order, which can put a 4-D position
    embedding first, as in SAM2's Hiera)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv") if isinstance(cfg, dict) else None
    names = [first] if isinstance(first, str) else list(first or [])
    names += [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)][:1]
    return frozenset(f"{n}.weight" for n in names)


def load_weights(model: nn.Module, source: WeightsSource, head_keys: list[str], spec: str) -> int:
    """Load ``source`` into ``model`` except the classifier (``head_keys``); return tensors loaded.

    ``head_keys`` may also name tensors the model no longer has (removed aux heads): a checkpoint's
    copies of them are skipped rather than reported as unexpected.
    """
    src, label = read_state_dict(source)
    target = model.state_dict()
    head = set(head_keys)
    body = {k: v for k, v in target.items() if k not in head}
    stem = stem_keys(model)
    attempts = [("by key", src), ("by key after stripping prefixes", strip_prefixes(src))]
    key_problems: list[str] = []
    for how, candidate in attempts:
        mapped, problems = _by_key(body, head, candidate, stem)
        if not problems:
            return _apply(model, mapped, label, how, len(head))
        if len(mapped) > len(body) // 2 and not key_problems:
            key_problems = problems  # keys mostly agree: these are the real mismatches
    mapped, problems = _by_position(target, head, src, stem)
    if not problems:
        return _apply(model, mapped, label, "by position (keys differ, shapes agree in order)", len(head))
    shown = key_problems or problems
    raise WeightsMismatchError(
        f"weights from {label} do not fit {spec}; nothing was loaded. First mismatches: "
        f"{'; '.join(shown[:4])}{' ...' if len(shown) > 4 else ''}. Expected the state dict of this "
        "architecture (any classifier is ignored), matched by key, by key without 'module.'/'model.'/"
        "'backbone.' prefixes, or by position when every shape agrees in order. Fix: pass weights saved "
        "from this architecture, or weights=None (pretrained=False starts from random init)."
    )


def _apply(model: nn.Module, mapped: dict[str, Tensor], label: str, how: str, n_head: int) -> int:
    result = model.load_state_dict(mapped, strict=False)
    missing = [k for k in result.missing_keys if k not in mapped and not k.endswith(OPTIONAL_SUFFIX)]
    if len(missing) > n_head or result.unexpected_keys:  # pragma: no cover - guarded by matching above
        raise WeightsMismatchError(f"internal: partial load from {label}: {missing[:4]}")
    logger.info(
        "loaded %d tensors from %s %s; classifier excluded (%d tensors)", len(mapped), label, how, n_head
    )
    return len(mapped)
