"""One model of every timm architecture family through FineTuner (issue 3), with the checks of
``sweep_checks.run_case``: head, groups in forward order, outputs in train/eval, freezing, summary.

A family is the timm module a model is defined in (``timm.list_modules()``); its representative is
its smallest model by parameter count, run at the smallest input it accepts. Both are derived by
``benchmarks/backbone_sweep.py --write-table`` (counting parameters of all ~1400 timm models takes
minutes, so the result is stored in ``sweep_table.json``); the first test checks that the table
matches the installed timm, so a new family cannot be silently left out.
"""

from __future__ import annotations

import pytest
from sweep_checks import load_table, run_case

from finetunekit.backbones.timm_adapter import families

FAMILIES = families()
TABLE: dict[str, list] = load_table()["timm"]
# Families that cannot work through FineTuner, with the reason. Empty: every family passes.
SKIPPED: dict[str, str] = {}


def test_table_has_a_representative_of_every_installed_family() -> None:
    assert sorted(TABLE) == sorted(FAMILIES), "regenerate: benchmarks/backbone_sweep.py --write-table"
    for family, (name, size) in TABLE.items():
        assert name in FAMILIES[family], f"{name} is not in timm.models.{family}"
        assert size is not None or family in SKIPPED, f"{family}: no input size passed when written"


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_timm_family(family: str) -> None:
    if family in SKIPPED:
        pytest.skip(SKIPPED[family])
    name, size = TABLE.get(family, (FAMILIES[family][0], None))
    run_case(f"timm/{name}", size or 224)
