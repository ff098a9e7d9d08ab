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


def training_meta(meta: Any, source: str) -> dict[str, Any]:
    """``meta`` (the parsed training.json) checked key by key; returns it unchanged."""
    r = Reader(source)
    m = r.mapping(meta, "training")
    steps = r.integer(r.need(m, "steps_per_epoch", ""), "steps_per_epoch", 1, MAX_COUNT)
    epochs = r.integer(r.need(m, "epochs", ""), "epochs", 1, MAX_COUNT)
    epoch = r.integer(r.need(m, "epoch", ""), "epoch", 0, epochs)
    step = r.integer(r.need(m, "step", ""), "step", 0, steps)  # steps: the epoch ran, its end did not
    if epoch == epochs and step:
        raise r.fail("step", step, f"0 at the end of training (epoch={epoch} of {epochs})")
    r.number(r.need(m, "base_lr", ""), "base_lr", 0.0, 1e6, above=True)
    r.integer(r.need(m, "skipped", ""), "skipped", 0, MAX_COUNT)
    r.integer(m.get("schedule_cycle_start", 0), "schedule_cycle_start", 0, epoch)
    if step > 0:
        r.integer(r.need(m, "tracker_n", ""), "tracker_n", 0, MAX_COUNT)
    schedule = r.need(m, "schedule", "")
    if schedule is not None:
        r.mapping(schedule, "schedule")
    _optimizer(r, r.mapping(r.need(m, "optimizer", ""), "optimizer"))
    _rng(r, r.mapping(r.need(m, "rng", ""), "rng"))
    for i, entry in enumerate(r.items(r.need(m, "callbacks", ""), "callbacks", 0, 10_000)):
        cb = r.mapping(entry, f"callbacks[{i}]")
        r.string(r.need(cb, "class", f"callbacks[{i}].class"), f"callbacks[{i}].class", max_len=256)
        r.mapping(r.need(cb, "state", f"callbacks[{i}].state"), f"callbacks[{i}].state")
    if "fingerprints" in m:
        r.mapping(m["fingerprints"], "fingerprints")
    return m


def _optimizer(r: Reader, opt: dict[str, Any]) -> None:
    r.string(r.need(opt, "class", "optimizer.class"), "optimizer.class", max_len=256)
    for i, group in enumerate(
        r.items(r.need(opt, "groups", "optimizer.groups"), "optimizer.groups", 1, 100_000)
    ):
        g = r.mapping(group, f"optimizer.groups[{i}]")
        if "lr" in g:
            r.number(g["lr"], f"optimizer.groups[{i}].lr", 0.0, 1e6)
    scalars = r.mapping(r.need(opt, "scalars", "optimizer.scalars"), "optimizer.scalars")
    for name, values in scalars.items():
        r.mapping(values, f"optimizer.scalars.{name}")


def _rng(r: Reader, rng: dict[str, Any]) -> None:
    py = r.items(r.need(rng, "python", "rng.python"), "rng.python", 3, 3)
    r.integer(py[0], "rng.python[0]", 1, 3)
    words = r.items(py[1], "rng.python[1]", _MT_WORDS + 1, _MT_WORDS + 1)
    for i, w in enumerate(words[:-1]):
        r.integer(w, f"rng.python[1][{i}]", 0, 2**32 - 1)
    r.integer(words[-1], f"rng.python[1][{_MT_WORDS}]", 0, _MT_WORDS)
    if py[2] is not None:
        r.number(py[2], "rng.python[2]", -1e308, 1e308)
    np_state = r.items(r.need(rng, "numpy", "rng.numpy"), "rng.numpy", 4, 4)
    r.string(np_state[0], "rng.numpy[0]", ("MT19937",))
    r.integer(np_state[1], "rng.numpy[1]", 0, _MT_WORDS)
    r.integer(np_state[2], "rng.numpy[2]", 0, 1)
    r.number(np_state[3], "rng.numpy[3]", -1e308, 1e308)


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


def training_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str) -> None:
    """The RNG and metric tensors the restore puts back, with the dtypes and shapes torch expects."""
    _tensor(tensors, "rng.torch", source, torch.uint8, tuple(torch.get_rng_state().shape))
    _tensor(tensors, "rng.numpy", source, torch.int64, (_MT_WORDS,))
    if "loader.generator" in tensors:
        _tensor(tensors, "loader.generator", source, torch.uint8, tuple(torch.Generator().get_state().shape))
    if meta["step"] > 0:
        _tensor(tensors, "tracker.loss", source, torch.float64, ())
        _tensor(tensors, "tracker.correct", source, torch.float64, None)


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
