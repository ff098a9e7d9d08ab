"""The training state of a checkpoint (``training.json`` + ``training.safetensors``), checked before use.

Restoring a fit writes the optimizer, the RNGs, the loop position and every callback's state; a wrong
type or an out-of-range value in any of them would otherwise surface as a raw KeyError / TypeError in
``random.setstate`` or, worse, be accepted (a step beyond the epoch, a negative epoch). Each check
names the key; the shapes of optimizer tensors are compared with the parameters they belong to.
"""

from __future__ import annotations

from typing import Any

import torch

from finetunekit.errors import CheckpointError
from finetunekit.saving.validate import MAX_COUNT, Reader

_MT_WORDS = 624  # Mersenne Twister state words (Python's and numpy's generators)
MAX_RANKS = 1 << 20  # processes of one job, beyond any real one
# The parts every fit registers (finetunekit.training.parts); EMA, mixing and others only when turned on.
_REQUIRED_PARTS = ("model", "optimizer", "schedule", "loop", "stepper", "callbacks", "loader", "rng")


def _position(r: Reader, m: dict[str, Any]) -> tuple[int, int]:
    steps = r.integer(r.need(m, "steps_per_epoch", ""), "steps_per_epoch", 1, MAX_COUNT)
    epochs = r.integer(r.need(m, "epochs", ""), "epochs", 1, MAX_COUNT)
    epoch = r.integer(r.need(m, "epoch", ""), "epoch", 0, epochs)
    step = r.integer(r.need(m, "step", ""), "step", 0, steps)  # steps: the epoch ran, its end did not
    if epoch == epochs and step:
        raise r.fail("step", step, f"0 at the end of training (epoch={epoch} of {epochs})")
    return epoch, step


def training_meta(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` (the parsed training.json) checked key by key; returns it unchanged. The layout is the
    registry's (finetunekit.training.state): ``version`` and one object per registered part."""
    r = Reader(source)
    m = r.mapping(meta, "training")
    epoch, _ = _position(r, m)
    r.integer(r.need(m, "version", ""), "version", 1, 10**6)
    _parts(r, r.mapping(r.need(m, "parts", ""), "parts"), epoch)
    if "fingerprints" in m:
        r.mapping(m["fingerprints"], "fingerprints")
    return m


def _parts(r: Reader, parts: dict[str, Any], epoch: int) -> None:
    """The registry layout: every part's state is an object; the parts whose layout is known here are
    checked like version 1's keys (the others by their own ``load_state_dict``)."""
    for name in _REQUIRED_PARTS:
        r.need(parts, name, f"parts.{name}")
    for name, value in parts.items():
        r.mapping(value, f"parts.{name}")
    if "schedule" in parts:
        s, key = parts["schedule"], "parts.schedule"
        r.number(r.need(s, "base_lr", f"{key}.base_lr"), f"{key}.base_lr", 0.0, 1e6, above=True)
        r.integer(s.get("cycle_start", 0), f"{key}.cycle_start", 0, epoch)
        if s.get("scheduler") is not None:
            r.mapping(s["scheduler"], f"{key}.scheduler")
    if "loop" in parts:
        loop, key = parts["loop"], "parts.loop"
        r.integer(r.need(loop, "skipped", f"{key}.skipped"), f"{key}.skipped", 0, MAX_COUNT)
        if loop.get("tracker") is not None:
            tracker = r.mapping(loop["tracker"], f"{key}.tracker")
            r.integer(r.need(tracker, "n", f"{key}.tracker.n"), f"{key}.tracker.n", 0, MAX_COUNT)
    if "callbacks" in parts:
        _callbacks(r, r.need(parts["callbacks"], "list", "parts.callbacks.list"), "parts.callbacks.list")
    _metas(r, parts)


def _metas(r: Reader, parts: dict[str, Any]) -> None:
    for name, check in (("rng", _rng), ("optimizer", _optimizer)):
        if name in parts:
            key = f"parts.{name}.meta"
            check(r, r.mapping(r.need(parts[name], "meta", key), key), key)
    if "rng" in parts and "ranks" in parts["rng"]:
        _other_ranks(r, parts["rng"]["ranks"])


def _other_ranks(r: Reader, ranks: Any) -> None:
    """The RNG states of ranks 1..N-1 of a DDP / FSDP run, each checked as rank 0's."""
    for i, entry in enumerate(r.items(ranks, "parts.rng.ranks", 0, MAX_RANKS)):
        key = f"parts.rng.ranks[{i}]"
        rank = r.mapping(entry, key)
        _rng(r, r.mapping(r.need(rank, "meta", f"{key}.meta"), f"{key}.meta"), f"{key}.meta")


def _callbacks(r: Reader, entries: Any, key: str) -> None:
    for i, entry in enumerate(r.items(entries, key, 0, 10_000)):
        cb = r.mapping(entry, f"{key}[{i}]")
        r.string(r.need(cb, "class", f"{key}[{i}].class"), f"{key}[{i}].class", max_len=256)
        r.mapping(r.need(cb, "state", f"{key}[{i}].state"), f"{key}[{i}].state")


def _optimizer(r: Reader, opt: dict[str, Any], key: str) -> None:
    r.string(r.need(opt, "class", f"{key}.class"), f"{key}.class", max_len=256)
    groups = r.items(r.need(opt, "groups", f"{key}.groups"), f"{key}.groups", 1, 100_000)
    for i, group in enumerate(groups):
        g = r.mapping(group, f"{key}.groups[{i}]")
        if "lr" in g:
            r.number(g["lr"], f"{key}.groups[{i}].lr", 0.0, 1e6)
    scalars = r.mapping(r.need(opt, "scalars", f"{key}.scalars"), f"{key}.scalars")
    for name, values in scalars.items():
        r.mapping(values, f"{key}.scalars.{name}")


def _rng(r: Reader, rng: dict[str, Any], key: str) -> None:
    py = r.items(r.need(rng, "python", f"{key}.python"), f"{key}.python", 3, 3)
    r.integer(py[0], f"{key}.python[0]", 1, 3)
    words = r.items(py[1], f"{key}.python[1]", _MT_WORDS + 1, _MT_WORDS + 1)
    for i, w in enumerate(words[:-1]):
        r.integer(w, f"{key}.python[1][{i}]", 0, 2**32 - 1)
    r.integer(words[-1], f"{key}.python[1][{_MT_WORDS}]", 0, _MT_WORDS)
    if py[2] is not None:
        r.number(py[2], f"{key}.python[2]", -1e308, 1e308)
    np_state = r.items(r.need(rng, "numpy", f"{key}.numpy"), f"{key}.numpy", 4, 4)
    r.string(np_state[0], f"{key}.numpy[0]", ("MT19937",))
    r.integer(np_state[1], f"{key}.numpy[1]", 0, _MT_WORDS)
    r.integer(np_state[2], f"{key}.numpy[2]", 0, 1)
    r.number(np_state[3], f"{key}.numpy[3]", -1e308, 1e308)


def _tensor(tensors: dict[str, torch.Tensor], key: str, source: str, dtype: torch.dtype,
            shape: tuple[int, ...] | None) -> None:  # fmt: skip
    t = tensors.get(key)
    if t is None:
        raise CheckpointError(f"{source}: the tensor {key!r} is missing; the training state is incomplete.")
    if t.dtype != dtype or (shape is not None and tuple(t.shape) != shape):
        raise CheckpointError(
            f"{source}: the tensor {key!r} is {t.dtype} of shape {tuple(t.shape)}; expected {dtype}"
            f"{'' if shape is None else f' of shape {shape}'}. The checkpoint was altered; use an "
            "earlier one."
        )


def decoded_parts(parts: dict[str, Any], params: dict[str, torch.Tensor], source: str) -> None:
    """The registry layout once its tensors are put back: the RNG and optimizer tensors checked
    (dtypes and shapes torch expects; optimizer tensors against the parameters they belong to)."""
    rng_part = parts.get("rng", {})
    others = [e.get("tensors") for e in rng_part.get("ranks", []) if isinstance(e, dict)]
    for rng in [rng_part.get("tensors"), *others]:
        if isinstance(rng, dict):
            _tensor(rng, "rng.torch", source, torch.uint8, tuple(torch.get_rng_state().shape))
            _tensor(rng, "rng.numpy", source, torch.int64, (_MT_WORDS,))
    opt = parts.get("optimizer", {}).get("tensors")
    if isinstance(opt, dict):
        optimizer_tensors(opt, params, source)
    tracker = parts.get("loop", {}).get("tracker")
    if isinstance(tracker, dict):
        _tensor(tracker, "loss", source, torch.float64, ())
        _tensor(tracker, "correct", source, torch.float64, None)


def optimizer_tensors(tensors: dict[str, torch.Tensor], params: dict[str, torch.Tensor], source: str) -> None:
    """Optimizer state tensors must belong to a parameter of this model and match its shape (torch's
    ``load_state_dict`` does not check, and a wrong shape would fail at the first step)."""
    for key, t in tensors.items():
        if not key.startswith("optim."):
            continue
        name, _, field = key[len("optim.") :].rpartition(".")
        p = params.get(name)
        if p is None:
            raise CheckpointError(
                f"{source}: the optimizer state {key!r} belongs to a parameter this model lacks; expected "
                "a checkpoint of this model. Resume with the configuration that wrote it."
            )
        if t.ndim > 0 and tuple(t.shape) != tuple(p.shape):
            raise CheckpointError(
                f"{source}: the optimizer state {key!r} has shape {tuple(t.shape)} but parameter {name!r} "
                f"has {tuple(p.shape)}; the checkpoint was altered or is of another model."
            )
        if not (t.is_floating_point() or field == "step"):
            raise CheckpointError(f"{source}: the optimizer state {key!r} is {t.dtype}; expected floats.")
