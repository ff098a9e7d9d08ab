"""One backbone sweep case: build through FineTuner, then check head, groups, outputs, freezing, summary.

Shared by the registry sweeps in this folder and by ``benchmarks/backbone_sweep.py`` (which adds this
folder to ``sys.path``), so the benchmark's failure table means exactly what the tests assert.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from finetunekit import FineTuner
from finetunekit.backbones import check_groups
from finetunekit.backbones.common import param_names_under
from finetunekit.strategies import FrozenBackbone

NUM_CLASSES = 3
BATCH = 2  # BatchNorm in train mode needs more than one value per channel
TABLE = Path(__file__).with_name("sweep_table.json")
INTERPOLATIONS = {"bilinear", "bicubic", "nearest", "nearest-exact", "lanczos", "box", "hamming"}
_INIT_FNS = (
    "constant_", "zeros_", "ones_", "normal_", "uniform_", "trunc_normal_", "kaiming_normal_",
    "kaiming_uniform_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
)  # fmt: skip


@contextlib.contextmanager
def skip_torch_init() -> Iterator[None]:
    """Make ``torch.nn.init`` a no-op while building: the sweep checks structure and shapes, and
    initializing e.g. RegNetY-128GF's 644M parameters costs seconds that say nothing about them."""
    saved = {n: getattr(nn.init, n) for n in _INIT_FNS}
    try:
        for n in _INIT_FNS:
            setattr(nn.init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def load_table() -> dict[str, Any]:
    """``{"torchvision": {name: size}, "timm": {family: [name, size]}, ...}`` written by the benchmark."""
    return json.loads(TABLE.read_text())


def expected_head_params(ft: FineTuner) -> list[str]:
    """The classifier's parameters, from the registry's own API where it has one (timm: all heads)."""
    model = ft.model
    if ft.spec.startswith("timm/"):
        from finetunekit.backbones.timm_adapter import head_paths

        return [n for p in head_paths(model) for n in param_names_under(model, p)]
    return param_names_under(model, ft._backbone.head_path)


def head_out_features(head: nn.Module) -> set[int]:
    """Output widths of the classifier's last Linear / conv, per head (CrossViT: a list of heads).

    Only the last layer gives the classes: timm's MLP heads (MetaFormer's ``MlpHead``) have a hidden
    Linear too, which ``reset_classifier`` re-creates with the rest of the head.
    """
    heads = list(head) if isinstance(head, nn.ModuleList) else [head]
    outs = set()
    for h in heads:
        layers = [m for m in h.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv1d))]
        last = layers[-1]
        outs.add(int(last.out_features if isinstance(last, nn.Linear) else last.out_channels))
    return outs


def execution_order(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Parameter name -> rank of the first call of its owning module in a forward pass.

    Registration order (``named_parameters``) is not execution order in every model (CoaT registers
    all patch embeddings before all blocks), so "input -> head" is checked against the forward pass.
    """
    calls: list[str] = []
    hooks = [
        m.register_forward_pre_hook(lambda mod, args, name=name: calls.append(name))
        for name, m in model.named_modules()
        if any(True for _ in m.parameters(recurse=False))
    ]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    first = {name: calls.index(name) for name in dict.fromkeys(calls)}
    order = {}
    for owner, module in model.named_modules():
        for leaf, _ in module.named_parameters(recurse=False):
            if owner and owner in first:  # root params (tokens) have no call of their own
                order[f"{owner}.{leaf}"] = first[owner]
    return order


def _check_groups(ft: FineTuner, x: torch.Tensor) -> None:
    groups = ft._backbone.groups
    check_groups(ft.model, groups)
    order = execution_order(ft.model, x)
    starts = [min((order[n] for n in g.param_names if n in order), default=None) for g in groups]
    ranked = [s for s in starts if s is not None]  # a group of only root tokens has no rank
    assert ranked == sorted(ranked), f"groups not ordered input -> head: {[g.name for g in groups]}"
    assert len(groups) >= 3, f"expected stage-level groups, got {[g.name for g in groups]}"
    assert len({g.name for g in groups}) == len(groups), "group names must be unique"


def _check_outputs(model: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        for training in (False, True):
            model.train(training)
            out = model(x)
            assert isinstance(out, torch.Tensor), f"train={training}: got {type(out).__name__}"
            assert out.shape == (BATCH, NUM_CLASSES), f"train={training}: shape {tuple(out.shape)}"


def _check_data_config(ft: FineTuner, size: int, in_chans: int) -> None:
    cfg = ft.data_config
    assert cfg.input_size == (in_chans, size, size)
    assert len(cfg.mean) == len(cfg.std) == in_chans and all(s > 0 for s in cfg.std)
    assert cfg.interpolation in INTERPOLATIONS and 0 < cfg.crop_pct <= 1


def run_case(spec: str, size: int, in_chans: int = 3) -> FineTuner:
    """Everything issue 3 asks of one backbone; raises AssertionError (or the build error) if not."""
    with skip_torch_init():
        ft = FineTuner(
            spec, NUM_CLASSES, pretrained=False, image_size=size, in_chans=in_chans,
            strategy=FrozenBackbone(), device="cpu",
        )  # fmt: skip
    head = ft.model.get_submodule(ft._backbone.head_path)
    assert head_out_features(head) == {NUM_CLASSES}, f"classifier outputs {head_out_features(head)}"
    head_params = expected_head_params(ft)
    assert ft._backbone.groups[-1].param_names == head_params, "head group != classifier params"
    x = torch.randn(BATCH, in_chans, size, size)
    _check_outputs(ft.model, x)
    _check_groups(ft, x)
    _check_data_config(ft, size, in_chans)
    ft.compile()
    ft._apply_plan(0)
    trainable = [n for n, p in ft.model.named_parameters() if p.requires_grad]
    assert trainable == head_params, f"FrozenBackbone left {len(trainable)} params trainable"
    text = ft.summary()
    assert all(g.name in text for g in ft._backbone.groups)
    return ft
