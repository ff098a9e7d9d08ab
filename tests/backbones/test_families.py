"""Every supported family in both registries: output shape, fresh head, ordered stage-level groups."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from finetunekit.backbones import Backbone, build_backbone, check_groups

NUM_CLASSES = 7

# spec, input size, expected group names (None: only the count is pinned)
FAMILIES = [
    ("timm/resnet18", 32, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("timm/resnext26ts", 32, ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]),
    ("timm/efficientnet_lite0", 32, ["stem", *[f"blocks.{i}" for i in range(7)], "head"]),
    ("timm/mobilenetv2_050", 32, ["stem", *[f"blocks.{i}" for i in range(7)], "head"]),
    ("timm/mobilenetv3_small_050", 32, ["stem", *[f"blocks.{i}" for i in range(6)], "head"]),
    ("timm/convnext_atto", 32, ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]),
    ("timm/vit_tiny_patch16_224", 32, ["stem", *[f"blocks.{i}" for i in range(12)], "head"]),
    ("timm/regnetx_002", 32, ["stem", "s1", "s2", "s3", "s4", "head"]),
    ("timm/densenet121", 32, ["stem", *[f"features.denseblock{i}" for i in range(1, 5)], "head"]),
    (
        "timm/swin_tiny_patch4_window7_224",
        64,
        ["stem", "layers.0", "layers.1", "layers.2", "layers.3", "head"],
    ),
    ("timm/vgg11", 32, None),
    ("torchvision/resnet18", 32, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("torchvision/resnext50_32x4d", 32, ["stem", "layer1", "layer2", "layer3", "layer4", "head"]),
    ("torchvision/efficientnet_b0", 32, ["stem", *[f"features.{i}" for i in range(1, 9)], "head"]),
    (
        "torchvision/mobilenet_v2",
        32,
        ["stem", *[f"features.{i}" for i in (1, 2, 4, 7, 11, 14, 17, 18)], "head"],
    ),
    ("torchvision/mobilenet_v3_small", 32, ["stem", *[f"features.{i}" for i in (1, 2, 4, 7, 9, 12)], "head"]),
    (
        "torchvision/convnext_tiny",
        32,
        ["stem", "features.1", "features.3", "features.5", "features.7", "head"],
    ),
    ("torchvision/regnet_x_400mf", 32, ["stem", *[f"trunk_output.block{i}" for i in range(1, 5)], "head"]),
    ("torchvision/densenet121", 32, ["stem", *[f"features.denseblock{i}" for i in range(1, 5)], "head"]),
    ("torchvision/swin_t", 32, ["stem", "features.1", "features.3", "features.5", "features.7", "head"]),
    ("torchvision/vgg11", 32, ["stage1", "stage2", "stage3", "stage4", "stage5", "head"]),
    (
        "torchvision/vit_b_16",
        32,
        ["stem", *[f"encoder.layers.encoder_layer_{i}" for i in range(12)], "head"],
    ),
]


def _first_index(bb: Backbone) -> list[int]:
    order = {n: i for i, (n, _) in enumerate(bb.model.named_parameters())}
    return [min(order[n] for n in g.param_names) for g in bb.groups]


@pytest.mark.parametrize(("spec", "size", "names"), FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family(spec: str, size: int, names: list[str] | None) -> None:
    bb = build_backbone(spec, NUM_CLASSES, pretrained=False, image_size=size)
    bb.model.eval()
    with torch.no_grad():
        out = bb.model(torch.randn(2, 3, size, size))
    assert out.shape == (2, NUM_CLASSES)

    head = bb.model.get_submodule(bb.head_path)
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    head_params = [n for n, _ in bb.model.named_parameters() if n.startswith(bb.head_path + ".")]
    assert bb.groups[-1].name == "head"
    assert bb.groups[-1].param_names == head_params

    check_groups(bb.model, bb.groups)
    starts = _first_index(bb)
    assert starts == sorted(starts), "groups must be ordered input -> head"
    if names is not None:
        assert [g.name for g in bb.groups] == names
    assert bb.spec == spec
    assert bb.data_config.input_size == (3, size, size)


def test_hidden_classifier_layers_stay_out_of_the_head() -> None:
    """MobileNetV3 / VGG hidden Linear layers are pretrained: they train with the group before the head."""
    bb = build_backbone("torchvision/mobilenet_v3_small", 3, pretrained=False)
    assert bb.head_path == "classifier.3"
    assert "classifier.0.weight" in bb.groups[-2].param_names
    vgg = build_backbone("torchvision/vgg11", 3, pretrained=False)
    assert vgg.head_path == "classifier.6"
    assert {"classifier.0.weight", "classifier.3.weight"} <= set(vgg.groups[-2].param_names)


def test_final_norm_joins_previous_group_not_head() -> None:
    bb = build_backbone("timm/convnext_atto", 3, pretrained=False)
    assert bb.groups[-1].param_names == ["head.fc.weight", "head.fc.bias"]
    assert "head.norm.weight" in bb.groups[-2].param_names


def test_vgg_stage_boundaries_follow_max_pools() -> None:
    bb = build_backbone("torchvision/vgg11", 3, pretrained=False)
    assert bb.groups[0].param_names == ["features.0.weight", "features.0.bias"]
    assert bb.groups[2].param_names == [
        "features.6.weight",
        "features.6.bias",
        "features.8.weight",
        "features.8.bias",
    ]


def test_no_weight_decay_covers_biases_norms_and_tokens() -> None:
    bb = build_backbone("timm/vit_tiny_patch16_224", 3, pretrained=False, image_size=32)
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "head.bias"} <= bb.no_weight_decay
    assert "blocks.0.attn.qkv.weight" not in bb.no_weight_decay
    tv = build_backbone("torchvision/vit_b_16", 3, pretrained=False, image_size=32)
    assert {"class_token", "encoder.pos_embedding", "conv_proj.bias"} <= tv.no_weight_decay
    assert "conv_proj.weight" not in tv.no_weight_decay


def test_head_matches_model_dtype_and_is_fresh() -> None:
    a = build_backbone("timm/resnet18", 4, pretrained=False)
    assert a.model.fc.weight.dtype == torch.float32
    assert a.model.fc.weight.shape == (4, 512)
