import pytest

from finetunekit.errors import ConfigError, FineTuneKitError
from finetunekit.strategies import (
    LPFT,
    Composed,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
    Strategy,
    resolve_strategy,
)


def test_full_and_frozen_plans():
    assert FullFineTune().plan(4, 0) == [1.0, 1.0, 1.0, 1.0]
    assert FrozenBackbone().plan(4, 3) == [None, None, None, 1.0]


def test_gradual_unfreeze_opens_top_down_every_k_epochs():
    s = GradualUnfreeze(every=2)
    opened = [sum(x is not None for x in s.plan(4, e)) for e in range(8)]
    assert opened == [1, 1, 2, 2, 3, 3, 4, 4]
    assert s.plan(4, 2) == [None, None, 1.0, 1.0]
    assert s.horizon(4) == 7


def test_gradual_unfreeze_milestones_and_decay():
    s = GradualUnfreeze(milestones={0: 1, 3: 3}, decay=0.5)
    assert s.plan(4, 2) == [None, None, None, 1.0]
    assert s.plan(4, 3) == [None, 0.25, 0.5, 1.0]


def test_discriminative_lr_decays_by_depth_and_checks_scales():
    assert DiscriminativeLR(0.5).plan(3, 0) == [0.25, 0.5, 1.0]
    assert DiscriminativeLR(scales=[0.1, 0.2, 1.0]).plan(3, 0) == [0.1, 0.2, 1.0]
    with pytest.raises(ConfigError, match="has 2 entries but the backbone has 3"):
        DiscriminativeLR(scales=[0.1, 1.0]).validate(3)


def test_lpft_probe_then_finetune():
    s = LPFT(probe_epochs=2, finetune_scale=0.1)
    assert s.plan(3, 1) == [None, None, 1.0]
    assert s.plan(3, 2) == [0.1, 0.1, 0.1]


def test_composition_requires_all_and_multiplies():
    s = resolve_strategy([GradualUnfreeze(every=1), DiscriminativeLR(0.5)])
    assert isinstance(s, Composed)
    assert s.plan(3, 0) == [None, None, 1.0]
    assert s.plan(3, 1) == [None, 0.5, 1.0]
    assert s.plan(3, 5) == [0.25, 0.5, 1.0]


def test_custom_strategy_subclass():
    class HeadTwiceAsFast(Strategy):
        def plan(self, n_groups, epoch):
            return [1.0] * (n_groups - 1) + [2.0]

    assert HeadTwiceAsFast().plan(3, 0) == [1.0, 1.0, 2.0]


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda: GradualUnfreeze(every=0), "every=0"),
        (lambda: DiscriminativeLR(decay=1.5), "decay=1.5"),
        (lambda: LPFT(probe_epochs=0), "probe_epochs=0"),
        (lambda: resolve_strategy("full"), "strategy='full'"),
        (lambda: resolve_strategy(FrozenBackbone), "pass an instance"),
        (lambda: resolve_strategy([]), "empty"),
        (lambda: GradualUnfreeze(milestones={-1: 2}), "milestones"),
        (lambda: GradualUnfreeze(milestones={0: 3, 2: 1}), "closes groups again"),
        (lambda: GradualUnfreeze(every=2, milestones={0: 1, 2: 3}), "pass one of them"),
        (lambda: DiscriminativeLR(scales=[0.1, -1.0, 1.0]).validate(3), "scale -1.0"),
    ],
)
def test_bad_strategy_arguments_are_clear_errors(bad, match):
    with pytest.raises(FineTuneKitError, match=match):
        bad()


def test_bad_plan_from_user_strategy_is_caught():
    class Broken(Strategy):
        def plan(self, n_groups, epoch):
            return [1.0]

    with pytest.raises(ConfigError, match="planned 1 layer groups but the backbone has 3"):
        Broken().validate(3)


def test_gradual_unfreeze_milestones_before_first_and_beyond_group_count():
    s = GradualUnfreeze(milestones={2: 2, 4: 99})
    assert [sum(x is not None for x in s.plan(4, e)) for e in range(6)] == [1, 1, 2, 2, 4, 4]
    assert s.horizon(4) == 5


def test_lpft_restart_is_a_schedule_phase_and_composes():
    assert LPFT(probe_epochs=3, restart_schedule=True).schedule_restarts(4) == [3]
    assert LPFT(probe_epochs=3).schedule_restarts(4) == []  # default: one schedule (measured)
    both = resolve_strategy([LPFT(probe_epochs=2, restart_schedule=True), GradualUnfreeze(every=1)])
    assert both.schedule_restarts(4) == [2]
    assert LPFT(probe_epochs=2).config()["restart_schedule"] is False
    assert LPFT().finetune_scale == 0.5
