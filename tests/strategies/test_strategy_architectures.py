"""Strategies on real timm / torchvision architectures (random init, 32 px): per-epoch trainability,
frozen weights and BN statistics bitwise, constant param-group count, exact per-step LRs under named and
torch schedules, refreezing. The backbone adapters' own layer groups are what is being exercised."""

from __future__ import annotations

import pytest
import torch
from helpers import make_images
from strategy_harness import check_record, expected_multipliers, run

from finetunekit import FineTuner
from finetunekit.errors import ConfigError
from finetunekit.strategies import LPFT, DiscriminativeLR, GradualUnfreeze, Strategy, resolve_strategy

pytestmark = pytest.mark.slow

ARCHS = ["timm/resnet18", "torchvision/mobilenet_v3_small", "torchvision/efficientnet_b0"]
EPOCHS, N, BATCH = 3, 8, 4  # 2 steps per epoch


class HeadAloneInTheMiddle(Strategy):
    """Everything, then the head alone (backbone frozen again), then everything."""

    def plan(self, n_groups: int, epoch: int) -> list[float | None]:
        return [None] * (n_groups - 1) + [1.0] if epoch == 1 else [1.0] * n_groups


def explicit_scales(n_groups: int) -> DiscriminativeLR:
    return DiscriminativeLR(scales=[round(0.1 + 0.9 * i / (n_groups - 1), 3) for i in range(n_groups)])


CASES = {  # strategy factory (given the group count) and the schedule it runs under
    "gradual_torch_scheduler": (
        lambda n: GradualUnfreeze(every=1),
        torch.optim.lr_scheduler.StepLR,
        {"step_size": 1, "gamma": 0.5},
    ),
    "composed_one_cycle": (lambda n: [GradualUnfreeze(every=1), DiscriminativeLR(0.7)], "one_cycle", {}),
    "lpft_cosine": (lambda n: LPFT(probe_epochs=1, restart_schedule=True), "cosine", {"warmup": 0.2}),
    "explicit_scales_slanted": (explicit_scales, "slanted_triangular", {}),
    "refreeze_constant": (lambda n: HeadAloneInTheMiddle(), "constant", {}),
}


def build(spec: str, strategy_factory) -> FineTuner:
    """The strategy may need the group count (explicit scales), so it is set after the build."""
    torch.manual_seed(0)
    ft = FineTuner(spec, num_classes=3, pretrained=False, image_size=32, device="cpu", seed=0)
    ft.strategy = resolve_strategy(strategy_factory(len(ft.groups)))
    ft.strategy.validate(len(ft.groups))
    return ft


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("spec", ARCHS)
def test_strategy_guarantees_on_real_architectures(spec, case):
    factory, schedule, kwargs = CASES[case]
    ft = build(spec, factory)
    assert len(ft.groups) >= 5, [g.name for g in ft.groups]
    ft.compile(lr=1e-3, schedule=schedule, schedule_kwargs=kwargs)
    x, y = make_images(N, num_classes=3, size=32)
    rec = run(ft, x, y, EPOCHS, BATCH)
    restarts = ft.strategy.schedule_restarts(len(ft.groups))
    check_record(rec, ft, EPOCHS, expected_multipliers(schedule, kwargs, N // BATCH, EPOCHS, restarts), 1e-3)
    if case == "gradual_torch_scheduler":  # the head first, then one more group per epoch, top down
        assert [sum(flags) for flags in rec.requires_grad.values()] == [1, 2, 3]
        assert rec.requires_grad[2][-3:] == [True, True, True] and not any(rec.requires_grad[2][:-3])


def test_frozen_bn_statistics_move_only_with_train_bn():
    """The negative control for the bitwise checks: with train_bn=True the frozen stem's BN running
    statistics DO change (so the checks above can fail), while its weights still do not."""
    x, y = make_images(N, num_classes=3, size=32)
    ft = FineTuner("torchvision/mobilenet_v3_small", num_classes=3, pretrained=False, image_size=32,
                   device="cpu", seed=0, strategy=GradualUnfreeze(every=1, train_bn=True))  # fmt: skip
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    ft.fit(x, y, epochs=1, batch_size=BATCH, verbose=0, augment=False)
    after = ft.model.state_dict()
    stem = [k for k in before if k.startswith("features.0.")]
    assert any(not torch.equal(before[k], after[k]) for k in stem if "running_mean" in k)
    assert all(torch.equal(before[k], after[k]) for k in stem if k.endswith("weight"))


def test_explicit_scales_are_checked_against_the_real_group_count():
    with pytest.raises(ConfigError, match=r"has 3 entries but the backbone has 6 layer groups"):
        FineTuner("timm/resnet18", num_classes=3, pretrained=False, image_size=32, device="cpu",
                  strategy=DiscriminativeLR(scales=[0.1, 0.5, 1.0]))  # fmt: skip
