"""groups=: attribute paths or globs, one entry per group; every parameter exactly once, head last."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetunekit import FineTuner
from finetunekit.backbones import build_backbone, rebuild_backbone
from finetunekit.errors import ConfigError


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = nn.Conv2d(8, 8, 3, padding=1)
        self.block2 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.block2(self.block1(self.stem(x)))))


def names(bb) -> list[str]:
    return [g.name for g in bb.groups]


def test_paths_and_globs_with_the_head_appended() -> None:
    bb = build_backbone(Net(), 3, groups=["stem", "block*", "classifier.0"])
    assert names(bb) == ["stem", "block*", "classifier.0", "head"]
    assert bb.groups[1].param_names == ["block1.weight", "block1.bias", "block2.weight", "block2.bias"]
    assert bb.groups[-1].param_names == ["classifier.2.weight", "classifier.2.bias"]
    assert bb.build_kwargs["groups"] == ["stem", "block*", "classifier.0"]


def test_a_list_entry_is_one_group_and_an_explicit_head_entry_is_kept() -> None:
    bb = build_backbone(Net(), 3, groups=[["stem", "block1"], "block2", "classifier.0", "classifier.2"])
    assert names(bb) == ["stem+block1", "block2", "classifier.0", "classifier.2"]
    assert bb.groups[-1].param_names == ["classifier.2.weight", "classifier.2.bias"]


def test_uncovered_parameters_are_named() -> None:
    with pytest.raises(ConfigError, match=r"leaves 4 parameters in no group: \['block2.weight', "
                       r"'block2.bias', 'classifier.0.weight', 'classifier.0.bias'\]"):  # fmt: skip
        build_backbone(Net(), 3, groups=["stem", "block1"])


def test_double_coverage_is_named_with_both_entries() -> None:
    match = r"stem\.0\.weight \(groups\[0\]='stem' and groups\[1\]='stem\.0'\)"
    with pytest.raises(ConfigError, match=match):
        build_backbone(Net(), 3, groups=["stem", "stem.0", "block*", "classifier.0"])


def test_entry_matching_nothing_is_named() -> None:
    with pytest.raises(ConfigError, match=r"groups\[1\]='blocks\*' matches no parameter"):
        build_backbone(Net(), 3, groups=["stem", "blocks*", "classifier.0"])


def test_head_mixed_with_other_parameters_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"classifier.*'classifier' with other parameters"):
        build_backbone(Net(), 3, groups=["stem", "block*", "classifier"])
    with pytest.raises(ConfigError, match="not the last group"):
        build_backbone(Net(), 3, groups=["classifier.2", "stem", "block*", "classifier.0"])


@pytest.mark.parametrize("bad", ["stem", [], ["stem", 3], [[]]])
def test_malformed_groups(bad: object) -> None:
    with pytest.raises(ConfigError, match="groups"):
        build_backbone(Net(), 3, groups=bad)  # type: ignore[arg-type]


def test_registry_model_groups_and_rebuild() -> None:
    groups = [["conv1", "bn1", "layer1"], "layer[23]", "layer4"]
    bb = build_backbone("torchvision/resnet18", 3, pretrained=False, groups=groups)
    assert names(bb) == ["conv1+bn1+layer1", "layer[23]", "layer4", "head"]
    again = rebuild_backbone(bb.build_kwargs, 3)
    assert [g.param_names for g in again.groups] == [g.param_names for g in bb.groups]


def test_finetuner_passes_groups_through_save_and_load(tmp_path) -> None:
    ft = FineTuner(Net(), 3, groups=["stem", "block*", "classifier.0"], device="cpu")
    assert [g.name for g in ft.groups] == ["stem", "block*", "classifier.0", "head"]
    ft.save(tmp_path / "run")
    again = FineTuner.load(tmp_path / "run", model=Net(), device="cpu")
    assert [g.name for g in again.groups] == [g.name for g in ft.groups]
