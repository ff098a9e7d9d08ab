"""BitFit / NormOnly: the parameter filter trains exactly the biases / norms (and the head); the rest of
the backbone stays bitwise pretrained; composition with plans; summary; errors."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, make_images
from torch import nn

from finetunekit import FineTuner
from finetunekit.errors import ConfigError
from finetunekit.strategies import (
    BitFit,
    DiscriminativeLR,
    FullFineTune,
    GradualUnfreeze,
    NormOnly,
    StrategyRunner,
)

X, Y = make_images(32, 3, 16, seed=1)


def fitted(strategy, epochs: int = 2) -> tuple[dict[str, torch.Tensor], FineTuner]:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, seed=0, strategy=strategy)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    ft.compile(lr=0.05).fit(X, Y, batch_size=8, epochs=epochs, verbose=0)
    return before, ft


def moved(before: dict[str, torch.Tensor], ft: FineTuner) -> set[str]:
    after = ft.model.state_dict()
    return {n for n, _ in ft.model.named_parameters() if not torch.equal(before[n], after[n])}


def test_bitfit_trains_biases_norms_and_head_only():
    before, ft = fitted(BitFit())
    params = {n for n, _ in ft.model.named_parameters()}
    expected = {n for n in params if n.endswith(".bias") or ".1." in n or n.startswith("fc.")}
    assert moved(before, ft) == expected  # stem.1 / stage1.1 are the BatchNorms
    assert torch.equal(before["stem.0.weight"], ft.model.state_dict()["stem.0.weight"])


def test_norm_only_leaves_conv_biases_pretrained():
    before, ft = fitted(NormOnly())
    assert moved(before, ft) == {"stem.1.weight", "stem.1.bias", "stage1.1.weight", "stage1.1.bias",
                                 "fc.weight", "fc.bias"}  # fmt: skip


def test_full_fine_tune_has_no_filter_and_trains_everything():
    before, ft = fitted(FullFineTune())
    assert FullFineTune().trainable_params(ft.model, ft._backbone.groups) is None
    assert moved(before, ft) == {n for n, _ in ft.model.named_parameters()}


def test_bitfit_composes_with_plans():
    before, ft = fitted([BitFit(), GradualUnfreeze(every=1)], epochs=1)
    assert moved(before, ft) == {"fc.weight", "fc.bias"}  # epoch 0 opens only the head
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16,
                   strategy=[BitFit(), DiscriminativeLR(0.5)]).compile(lr=1.0)  # fmt: skip
    assert ft.plan(0) == [0.25, 0.5, 1.0]


def test_summary_counts_the_parameters_that_train():
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, strategy=BitFit())
    text = ft.summary()
    assert "trains" in text
    rows = {line.split()[0]: line.split() for line in text.splitlines()[3:]}
    assert rows["stem"][1:3] == ["240", "24"]  # conv 216+8, BN 8+8; trains conv bias 8 + BN 16
    assert rows["trainable"][1] == f"{24 + 48 + 51:,}"
    assert "trains" not in FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16).summary()


class NoBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, bias=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).mean(dim=(2, 3)))


def test_a_backbone_without_biases_or_norms_is_an_error():
    with pytest.raises(ConfigError, match=r"BitFit\(\) found no biases or normalization layers"):
        FineTuner(NoBias(), 3, device="cpu", image_size=16, strategy=BitFit())


def test_strategy_runner_applies_the_filter():
    model = TinyNet(num_classes=3)
    ft = FineTuner(model, 3, device="cpu", image_size=16)
    runner = StrategyRunner(ft.model, ft._backbone.groups, NormOnly())
    opt = torch.optim.SGD(runner.param_groups(), lr=0.1)
    runner.begin_epoch(0, opt)
    trains = {n for n, p in ft.model.named_parameters() if p.requires_grad}
    assert trains == {"stem.1.weight", "stem.1.bias", "stage1.1.weight", "stage1.1.bias", "fc.weight",
                      "fc.bias"}  # fmt: skip
