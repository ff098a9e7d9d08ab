"""Aux heads (GoogLeNet, Inception v3), conv classifiers (SqueezeNet), input-channel adaptation of
the stem from 3-channel weights files, and timm models needing their size at creation."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
from timm.models import adapt_input_conv
from torch import nn

from finetunekit import FineTuner
from finetunekit.backbones import build_backbone
from finetunekit.errors import ConfigError, HeadNotFoundError


@pytest.fixture(scope="module")
def googlenet_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, torch.Tensor]]:
    """A torchvision-format GoogLeNet checkpoint with its aux heads, as torchvision ships it."""
    torch.manual_seed(0)
    sd = torchvision.models.googlenet(aux_logits=True, init_weights=True).state_dict()
    path = tmp_path_factory.mktemp("w") / "googlenet.pth"
    torch.save(sd, path)
    return str(path), sd


def test_aux_heads_are_removed_so_training_sees_one_tensor(googlenet_file) -> None:
    path, sd = googlenet_file
    ft = FineTuner("torchvision/googlenet", 3, pretrained=False, weights=path, image_size=32, device="cpu")
    assert ft.model.aux1 is None and ft.model.aux2 is None and not ft.model.aux_logits
    assert not any(n.startswith("aux") for n, _ in ft.model.named_parameters())
    assert torch.equal(ft.model.inception5b.branch1.conv.weight, sd["inception5b.branch1.conv.weight"])
    ft.model.train()
    assert isinstance(ft.model(torch.randn(2, 3, 32, 32)), torch.Tensor)
    x = np.random.default_rng(0).integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    history = ft.fit(x, np.arange(6) % 3, epochs=1, batch_size=3, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert [g.name for g in ft.groups] == ["stem", "inception3", "inception4", "inception5", "head"]


def test_inception_v3_has_no_aux_and_half_normalization() -> None:
    ft = FineTuner("torchvision/inception_v3", 3, pretrained=False, image_size=75, device="cpu")
    assert ft.model.AuxLogits is None and not ft.model.transform_input
    assert ft.data_config.mean == (0.5, 0.5, 0.5) and ft.data_config.std == (0.5, 0.5, 0.5)
    assert [g.name for g in ft.groups] == ["stem", "Mixed_5", "Mixed_6", "Mixed_7", "head"]


@pytest.mark.parametrize("in_chans", [1, 4])
def test_googlenet_file_adapts_stem_for_gray_and_rgba(googlenet_file, in_chans: int) -> None:
    """transform_input would index three channels; it is off, and the stem keeps adapted filters."""
    path, sd = googlenet_file
    bb = build_backbone("torchvision/googlenet", 3, pretrained=False, weights=path, in_chans=in_chans)
    want = adapt_input_conv(in_chans, sd["conv1.conv.weight"])
    assert torch.allclose(bb.model.conv1.conv.weight, want)
    assert bb.data_config.mean == (0.5,) * in_chans
    bb.model.eval()
    assert bb.model(torch.randn(1, in_chans, 32, 32)).shape == (1, 3)


def test_squeezenet_gets_a_fresh_1x1_conv_classifier() -> None:
    bb = build_backbone("torchvision/squeezenet1_1", 7, pretrained=False)
    head = bb.model.classifier[1]
    assert bb.head_path == "classifier.1" and isinstance(head, nn.Conv2d)
    assert head.out_channels == 7 and head.kernel_size == (1, 1)
    assert bb.groups[-1].param_names == ["classifier.1.weight", "classifier.1.bias"]
    assert bb.groups[0].name == "stage1"


def test_squeezenet_as_a_module_needs_head_naming_the_conv() -> None:
    with pytest.raises(HeadNotFoundError, match=r"1x1 nn.Conv2d.*'classifier.1'"):
        build_backbone(torchvision.models.squeezenet1_1(), 4)
    bb = build_backbone(torchvision.models.squeezenet1_1(), 4, head="classifier.1")
    assert bb.model(torch.randn(1, 3, 64, 64)).shape == (1, 4)


@pytest.mark.parametrize("name", ["crossvit_tiny_240", "sam2_hiera_tiny"])
def test_timm_stems_found_by_config_not_state_dict_order(name: str) -> None:
    """CrossViT has two input convs; SAM2-Hiera's state dict starts with a 4-D position embedding."""
    sd = timm.create_model(name, pretrained=False).state_dict()
    bb = build_backbone(f"timm/{name}", 3, pretrained=False, weights=sd, in_chans=1)
    stem = "patch_embed.0.proj.weight" if name.startswith("crossvit") else "patch_embed.proj.weight"
    assert torch.allclose(bb.model.state_dict()[stem], sd[stem].sum(dim=1, keepdim=True))


def test_timm_image_size_goes_to_img_size_where_accepted() -> None:
    bb = build_backbone("timm/levit_128s", 3, pretrained=False, image_size=96)
    bb.model.eval()
    assert bb.model(torch.randn(1, 3, 96, 96)).shape == (1, 3)
    assert bb.data_config.input_size == (3, 96, 96)


def test_fixed_size_model_without_img_size_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from finetunekit.backbones import timm_adapter

    monkeypatch.setattr(timm_adapter, "fixed_input_size", lambda name: True)
    with pytest.raises(ConfigError, match=r"image_size=64 for timm/resnet18.*native input size"):
        build_backbone("timm/resnet18", 3, pretrained=False, image_size=64)
