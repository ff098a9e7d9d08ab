"""Plain nn.Modules: head detection, head=, ambiguous/missing heads, top-level groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetunekit.backbones import build_backbone, check_groups
from finetunekit.errors import HeadNotFoundError


class Net(nn.Module):
    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.body = nn.Linear(8, 16)
        self.classifier = nn.Sequential(nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(self.pool(self.stem(x))))


def test_auto_head_is_last_linear_and_groups_are_children() -> None:
    bb = build_backbone(Net(), 3)
    assert bb.head_path == "classifier.3" and bb.spec == "module/Net"
    assert [g.name for g in bb.groups] == ["stem", "body", "head"]
    assert "classifier.1.weight" in bb.groups[-2].param_names  # hidden classifier layer is not the head
    assert bb.groups[-1].param_names == ["classifier.3.weight", "classifier.3.bias"]
    check_groups(bb.model, bb.groups)
    assert bb.model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    assert bb.build_kwargs == {"registry": "module", "class": f"{__name__}.Net", "head": "classifier.3"}
    assert bb.data_config.input_size == (3, 224, 224)


def test_head_path_is_respected() -> None:
    bb = build_backbone(Net(), 4, head="classifier.1")
    assert bb.head_path == "classifier.1" and bb.model.classifier[1].out_features == 4
    assert bb.groups[-1].param_names == ["classifier.1.weight", "classifier.1.bias"]


def test_head_with_num_classes_outputs_already_is_replaced_fresh() -> None:
    net = Net(num_classes=5)
    old = net.classifier[3]
    bb = build_backbone(net, 5)
    assert bb.model.classifier[3] is not old and bb.model.classifier[3].out_features == 5


def test_missing_head_lists_candidates() -> None:
    convnet = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 10, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(HeadNotFoundError, match=r"no nn.Linear.*'0', '1'"):
        build_backbone(convnet, 3)


def test_bad_head_path_lists_linear_layers() -> None:
    with pytest.raises(HeadNotFoundError, match=r"head='fc'.*'body', 'classifier.1', 'classifier.3'"):
        build_backbone(Net(), 3, head="fc")
    with pytest.raises(HeadNotFoundError, match=r"head='stem.0' is a Conv2d"):
        build_backbone(Net(), 3, head="stem.0")


def test_ambiguous_head_is_refused() -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.BatchNorm1d(6))
    with pytest.raises(HeadNotFoundError, match=r"ambiguous.*Candidates.*'1'"):
        build_backbone(net, 3)


def test_new_head_follows_device_and_dtype() -> None:
    bb = build_backbone(Net().double(), 3)
    assert bb.model.classifier[3].weight.dtype == torch.float64
    assert bb.model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).shape == (2, 3)


def test_in_chans_adapts_first_conv_keeping_filters() -> None:
    net = Net()
    rgb = net.stem[0].weight.detach().clone()
    bb = build_backbone(net, 3, in_chans=1)
    assert torch.allclose(bb.model.stem[0].weight, rgb.sum(dim=1, keepdim=True))
    assert bb.data_config.input_size[0] == 1


def test_root_parameters_join_the_first_group() -> None:
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.token = nn.Parameter(torch.zeros(4))
            self.embed = nn.Linear(4, 4)
            self.fc = nn.Linear(4, 2)

    bb = build_backbone(Tokens(), 2)
    assert bb.groups[0].param_names == ["token", "embed.weight", "embed.bias"]
    assert "token" in bb.no_weight_decay


def test_timm_model_instance_keeps_timm_groups_and_config() -> None:
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32)
    bb = build_backbone(model, 3)
    assert bb.head_path == "head" and bb.spec == "module/VisionTransformer"
    assert [g.name for g in bb.groups][:2] == ["stem", "blocks.0"] and bb.groups[-1].name == "head"
    assert bb.data_config.mean == (0.5, 0.5, 0.5)


def test_a_list_of_stages_gives_one_group_per_stage_and_a_final_norm_joins_the_last() -> None:
    """Models without a group_matcher (timm MetaFormer, PiT) still get stage-level groups."""

    def block() -> nn.Sequential:
        return nn.Sequential(nn.Linear(4, 4), nn.GELU())

    class Staged(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))  # leaves: stays one group
            self.stages = nn.ModuleList([nn.Sequential(block(), block()), nn.Sequential(block())])
            self.norm = nn.LayerNorm(4)
            self.fc = nn.Linear(4, 2)

    bb = build_backbone(Staged(), 2)
    assert [g.name for g in bb.groups] == ["stem", "stages.0", "stages.1", "head"]
    assert bb.groups[2].param_names[-2:] == ["norm.weight", "norm.bias"]
