"""find_lr: the fastai LR range test. It must leave everything exactly as it was, run under the
strategy's epoch-0 plan with exact LR ratios, stop on divergence and suggest a sensible LR."""

from __future__ import annotations

import copy
import math
import random
import sys

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.errors import ConfigError, MissingDependencyError
from finetunekit.strategies import DiscriminativeLR, GradualUnfreeze
from finetunekit.tools.lr_finder import LRFinderResult, suggest


def tuner(strategy=None, seed=0):
    torch.manual_seed(seed)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, seed=None, strategy=strategy, device="cpu")


def full_state(ft):
    """Everything find_lr could touch, as comparable values."""
    opt = copy.deepcopy(ft.optimizer.state_dict())  # state_dict() shares the live tensors
    return {
        "model": {k: v.clone() for k, v in ft.model.state_dict().items()},
        "requires_grad": [p.requires_grad for p in ft.model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in ft.model.parameters()],
        "modes": [m.training for m in ft.model.modules()],
        "opt_state": opt["state"],
        "opt_groups": opt["param_groups"],
        "opt_param_ids": [[id(p) for p in g["params"]] for g in ft.optimizer.param_groups],
        "rng": (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()),
    }


def assert_same(a, b, path="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), path
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), path
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), (path, a.keys(), b.keys())
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b, strict=True)):
            assert_same(u, v, f"{path}[{i}]")
    else:
        assert a == b, (path, a, b)


def test_find_lr_restores_everything_bitwise_after_training():
    x, y = make_images(64)
    ft = tuner([GradualUnfreeze(milestones={0: 2}), DiscriminativeLR(0.5)])
    ft.compile(lr=1e-2)
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)  # Adam moments, grads, BN statistics exist now
    ft.model.eval()  # an unusual mode must come back too
    random.seed(3)
    np.random.seed(3)
    torch.manual_seed(3)
    before = full_state(ft)
    result = ft.find_lr(x, y, num_steps=30, batch_size=16, end_lr=1.0)
    assert len(result.lrs) > 5
    assert_same(before, full_state(ft))


def test_training_after_find_lr_is_bitwise_the_same_as_without_it():
    """The strongest form of "left exactly as it was": nothing downstream can tell (RNG included, as
    the loaders draw their shuffling seed from torch's global RNG when seed=None)."""
    x, y = make_images(48)
    a, b = tuner(GradualUnfreeze(every=1)), tuner(GradualUnfreeze(every=1))
    for ft in (a, b):
        ft.compile(lr=1e-2)
    torch.manual_seed(5)
    a.find_lr(x, y, num_steps=20, batch_size=16)
    a.fit(x, y, epochs=2, batch_size=16, verbose=0)
    torch.manual_seed(5)
    b.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert_same(a.model.state_dict(), b.model.state_dict())


def test_sweep_uses_the_epoch0_plan_and_exact_ratios():
    x, y = make_images(48)
    ft = tuner([GradualUnfreeze(milestones={0: 2}), DiscriminativeLR(0.5)])  # stem frozen in epoch 0
    ft.compile()
    seen = []

    def hook(module, inputs):
        lrs = {pg["name"]: pg["lr"] for pg in ft.optimizer.param_groups}
        seen.append(
            (
                ft.model.stem[0].weight.requires_grad,
                ft.model.stage1[0].weight.requires_grad,
                ft.model.stem[1].training,
                ft.model.stage1[1].training,
                lrs["stem"],
                lrs["stage1"] / lrs["head"],
                lrs["head"],
            )
        )

    handle = ft.model.register_forward_pre_hook(hook)
    result = ft.find_lr(x, y, start_lr=1e-5, end_lr=1e-1, num_steps=12, batch_size=16)
    handle.remove()
    assert len(seen) == len(result.lrs) == 12
    for record, lr in zip(seen, result.lrs, strict=True):
        stem_rg, stage1_rg, stem_bn, stage1_bn, stem_lr, ratio, head_lr = record
        assert (stem_rg, stage1_rg, stem_bn, stage1_bn) == (False, True, False, True)
        assert stem_lr == 0.0 and ratio == 0.5 and head_lr == lr
    assert result.lrs[0] == 1e-5 and result.lrs[-1] == pytest.approx(1e-1)
    steps = np.diff(np.log(result.lrs))
    assert np.allclose(steps, steps[0])  # exponential


def test_divergence_stops_the_sweep():
    x, y = make_images(48)
    ft = tuner()
    ft.compile(optimizer="sgd")
    result = ft.find_lr(x, y, start_lr=1e-4, end_lr=1e4, num_steps=100, batch_size=16)
    assert result.diverged and len(result.lrs) < 100
    last = result.losses[-1]
    assert not math.isfinite(last) or last > 4 * min(result.losses[:-1])
    assert result.suggested_lr is not None and result.lrs[0] < result.suggested_lr < result.lrs[-1]
    assert result["suggested_lr"] == result.suggested_lr  # reads like a dict too


def test_suggestions_on_a_known_curve():
    lrs = list(np.logspace(-6, 1, 71))
    # flat, then falling fastest around 1e-3, bottom at 1e-1, then exploding
    losses = [2.0 - 1.5 / (1 + math.exp(-3 * (math.log10(lr) + 3))) + max(0.0, math.log10(lr) + 1) ** 2 * 5
              for lr in lrs]  # fmt: skip
    steep = suggest(lrs, losses, "steep")
    assert steep == pytest.approx(1e-3, rel=0.3)
    minimum = suggest(lrs, losses, "minimum")
    assert 1e-3 <= minimum <= 1e-2  # a tenth of the lowest point (about 1e-1)
    valley = suggest(lrs, losses, "valley")
    assert 1e-4 < valley < 1e-1  # inside the long descent, before the bottom
    assert suggest(lrs[:3], losses[:3], "valley") is None  # too few points to say


def test_plot_returns_a_figure_and_saves_it(tmp_path):
    pytest.importorskip("matplotlib")
    result = LRFinderResult(
        lrs=list(np.logspace(-5, 0, 20)), losses=list(np.linspace(2, 1, 20)), raw_losses=[0.0] * 20,
        suggested_lr=1e-3, suggestion="valley", diverged=False,
    )  # fmt: skip
    path = tmp_path / "lr.png"
    fig = result.plot(str(path))
    assert fig.axes[0].get_xscale() == "log"
    assert path.stat().st_size > 1000


def test_plot_without_matplotlib_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    result = LRFinderResult([1e-3], [1.0], [1.0], None, "valley", False)
    with pytest.raises(MissingDependencyError, match="pip install matplotlib"):
        result.plot()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"start_lr": 0.0}, "start_lr=0.0"),
        ({"start_lr": 1.0, "end_lr": 0.1}, "end_lr=0.1"),
        ({"num_steps": 1}, "num_steps=1"),
        ({"smooth": 1.0}, "smooth=1.0"),
        ({"suggestion": "best"}, "suggestion='best'"),
        ({"diverge": 0.5}, "diverge=0.5"),
    ],
)
def test_bad_arguments_raise_before_any_step(kwargs, match):
    x, y = make_images(16)
    ft = tuner()
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        ft.find_lr(x, y, **kwargs)
    assert all(torch.equal(v, ft.model.state_dict()[k]) for k, v in before.items())
