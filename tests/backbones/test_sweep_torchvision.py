"""Every torchvision classification model through FineTuner (issue 3): fresh head of num_classes
outputs, stage-level groups in forward order covering every parameter once, (batch, N) tensors in
train and eval mode, FrozenBackbone training only the head, data config and summary.

Each model runs at the smallest input it accepts (``sweep_table.json``, written by
``benchmarks/backbone_sweep.py --write-table``). Timing on the 2-core CI box: see docs/backbones.md.
"""

from __future__ import annotations

import pytest
import torchvision
from sweep_checks import load_table, run_case

NAMES = sorted(torchvision.models.list_models(module=torchvision.models))
SIZES: dict[str, int] = load_table()["torchvision"]


def test_table_lists_every_torchvision_model_with_a_size() -> None:
    missing = [n for n in NAMES if SIZES.get(n) is None]
    assert not missing, f"regenerate with benchmarks/backbone_sweep.py --write-table: {missing}"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_torchvision_model(name: str) -> None:
    run_case(f"torchvision/{name}", SIZES.get(name) or 224)
