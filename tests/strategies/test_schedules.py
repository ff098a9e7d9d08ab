import math

import pytest
import torch

from finetunekit.errors import ConfigError
from finetunekit.schedules import get_schedule


@pytest.mark.parametrize("name", ["constant", "one_cycle", "cosine", "slanted_triangular"])
def test_named_schedules_are_positive_and_peak_at_one(name):
    f = get_schedule(name, 100)
    values = [f(i / 100) for i in range(101)]
    assert all(v >= 0 for v in values)
    assert max(values) == pytest.approx(1.0, abs=0.02)


def test_one_cycle_shape():
    f = get_schedule("one_cycle", 100)
    assert f(0.0) == pytest.approx(1 / 25)
    assert f(0.25) == pytest.approx(1.0)
    assert f(1.0) < 1e-4


def test_cosine_warmup_then_decay():
    f = get_schedule("cosine", 100, warmup=0.1)
    assert f(0.0) < 0.02
    assert f(0.1) == pytest.approx(1.0)
    assert f(0.55) == pytest.approx(0.5, abs=1e-6)
    assert f(1.0) == pytest.approx(0.0, abs=1e-9)


def test_torch_scheduler_class_becomes_a_multiplier():
    f = get_schedule(torch.optim.lr_scheduler.StepLR, 10, step_size=2, gamma=0.5)
    seen = []
    for _ in range(6):
        seen.append(f(0.0))
        f.step()
    assert seen == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


def test_unknown_schedule_lists_options():
    with pytest.raises(ConfigError, match="one_cycle"):
        get_schedule("linear_warmup_magic", 10)
    with pytest.raises(ConfigError, match="StepLR"):
        get_schedule(torch.optim.lr_scheduler.StepLR, 10)  # missing step_size


def test_custom_callable():
    f = get_schedule(lambda p: 1 - p, 10)
    assert math.isclose(f(0.25), 0.75)
