"""ft.summary(): the whole plan before training, for every strategy, readable for long plans."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet

from finetunekit import FineTuner
from finetunekit.strategies import (
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
)
from finetunekit.tools.summary import epoch_ranges


def tuner(strategy):
    torch.manual_seed(0)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, strategy=strategy, device="cpu")


def table(text):
    """The rows of the table under the header lines: {group: [cells...]}."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("group"))
    return {line.split()[0]: line.split() for line in lines[start:]}


def test_epoch_ranges_collapse_identical_consecutive_plans():
    a, b, c = [None, 1.0], [1.0, 1.0], [0.5, 1.0]
    assert epoch_ranges([a, a, a, b, c, c], open_ended=False) == [("ep0-2", a), ("ep3", b), ("ep4-5", c)]
    assert epoch_ranges([a, b], open_ended=True) == [("ep0", a), ("ep1+", b)]
    assert epoch_ranges([a], open_ended=False) == [("ep0", a)]


def test_thirty_epoch_gradual_plan_stays_narrow():
    ft = tuner([GradualUnfreeze(every=2), DiscriminativeLR(0.5)])
    ft.compile(lr=1e-3)
    text = ft.summary(epochs=30)
    rows = table(text)
    assert rows["group"][3:] == ["ep0-1", "ep2-3", "ep4-29"]
    assert rows["stem"][3:] == ["frozen", "frozen", "2.50e-04"]
    assert rows["stage1"][3:] == ["frozen", "5.00e-04", "5.00e-04"]
    assert rows["head"][3:] == ["1.00e-03"] * 3
    assert rows["trainable"][1:] == ["51", "1,251", "1,491"]
    plan_lines = [line for line in text.splitlines()[3:] if not line.startswith("feature cache:")]
    assert max(len(line) for line in plan_lines) < 80
    assert "30 epochs" in text


@pytest.mark.parametrize(
    "strategy, expected",
    [
        (FullFineTune(), {"stem": ["x1"], "head": ["x1"]}),
        (FrozenBackbone(), {"stem": ["frozen"], "stage1": ["frozen"], "head": ["x1"]}),
        (GradualUnfreeze(every=1), {"stage1": ["frozen", "x1", "x1"], "stem": ["frozen", "frozen", "x1"]}),
        (DiscriminativeLR(0.5), {"stem": ["x0.25"], "stage1": ["x0.5"], "head": ["x1"]}),
        (LPFT(probe_epochs=2, finetune_scale=0.1), {"stem": ["frozen", "x0.1"], "head": ["x1", "x0.1"]}),
        (FrozenBackbone(train_bn=True), {"stem": ["frozen+bn-train"], "head": ["x1"]}),
    ],
)
def test_every_strategy_shows_its_plan_before_compile(strategy, expected):
    text = tuner(strategy).summary()
    rows = table(text)
    for group, cells in expected.items():
        assert rows[group][3:] == cells, (group, rows[group])
    assert rows["stem"][1:3] == ["240", "1"]  # parameter count and BN layers of the group
    assert "the last column holds from then on" in text


def test_lpft_summary_mentions_the_schedule_restart():
    assert "restarts its cycle at epoch(s) 2" in tuner(LPFT(probe_epochs=2, restart_schedule=True)).summary()
    assert "restarts" not in tuner(LPFT(probe_epochs=2)).summary()
