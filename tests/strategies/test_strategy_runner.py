"""StrategyRunner: a strategy in a plain PyTorch loop behaves exactly as in FineTuner.fit."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, make_images
from torch import nn

from finetunekit import FineTuner
from finetunekit.errors import NotCompiledError
from finetunekit.strategies import (
    DiscriminativeLR,
    FrozenBackbone,
    GradualUnfreeze,
    StrategyRunner,
    schedule_multiplier,
)


def tuner(strategy):
    torch.manual_seed(0)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, seed=0, strategy=strategy, device="cpu")


def preprocessed(n=48):
    x, y = make_images(n)
    x = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    return ((x - 0.45) / 0.25).contiguous(), torch.from_numpy(y)


@pytest.mark.parametrize("schedule", ["one_cycle", torch.optim.lr_scheduler.StepLR])
def test_plain_loop_with_runner_matches_fit_bitwise(schedule):
    x, y = preprocessed()
    strategy = [GradualUnfreeze(every=1), DiscriminativeLR(0.5)]
    kwargs = {"step_size": 2, "gamma": 0.5} if not isinstance(schedule, str) else {}
    epochs, batch, lr = 3, 16, 1e-2

    reference = tuner(strategy)
    reference.compile(lr=lr, schedule=schedule, schedule_kwargs=kwargs)
    reference.fit(x, y, epochs=epochs, batch_size=batch, shuffle=False, augment=False, verbose=0)

    ft = tuner(strategy)  # same init; trained by hand below
    runner = StrategyRunner.from_tuner(ft)
    opt = torch.optim.AdamW(runner.param_groups(weight_decay=0.01), lr=lr)
    steps = len(x) // batch
    multiplier = schedule_multiplier(schedule, epochs * steps, **kwargs)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(epochs):
        runner.begin_epoch(epoch, opt)
        for i in range(steps):
            runner.write_lrs(opt, base_lr=lr, multiplier=multiplier((epoch * steps + i) / (epochs * steps)))
            loss = loss_fn(ft.model(x[i * batch : (i + 1) * batch]), y[i * batch : (i + 1) * batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if hasattr(multiplier, "step"):
                multiplier.step()

    want, got = reference.model.state_dict(), ft.model.state_dict()
    assert [k for k in want if not torch.equal(want[k], got[k])] == []


def test_runner_on_a_bare_model_with_own_groups():
    from finetunekit.backbones.base import LayerGroup

    model = TinyNet()
    names = [n for n, _ in model.named_parameters()]
    groups = [
        LayerGroup("stem", [n for n in names if n.startswith("stem.")]),
        LayerGroup("stage1", [n for n in names if n.startswith("stage1.")]),
        LayerGroup("head", [n for n in names if n.startswith("fc.")]),
    ]
    runner = StrategyRunner(model, groups, FrozenBackbone(), no_weight_decay={"fc.bias"})
    opt = torch.optim.SGD(runner.param_groups(weight_decay=1e-4), lr=0.1)
    assert [pg["name"] for pg in opt.param_groups] == ["stem", "stage1", "head", "head/no_decay"]
    plan = runner.begin_epoch(0, opt)
    assert plan == [None, None, 1.0]
    assert not model.stem[1].training and model.training  # frozen BN in eval, the rest training
    runner.write_lrs(opt, base_lr=0.1, multiplier=0.5)
    assert [pg["lr"] for pg in opt.param_groups] == [0.0, 0.0, 0.05, 0.05]
    model.train()  # e.g. after validation: BN flips back ...
    assert model.stem[1].training
    runner.train_mode()  # ... and train_mode() restores the policy
    assert not model.stem[1].training


def test_runner_needs_begin_epoch_before_lrs():
    ft = tuner(FrozenBackbone())
    runner = StrategyRunner.from_tuner(ft)
    opt = torch.optim.AdamW(runner.param_groups(), lr=1e-3)
    with pytest.raises(NotCompiledError, match="begin_epoch"):
        runner.write_lrs(opt, 1e-3)
