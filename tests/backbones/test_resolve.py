"""Names -> registries, close-name suggestions, offline pretrained errors, data configs, rebuild."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from finetunekit.backbones import build_backbone, list_backbones, rebuild_backbone
from finetunekit.errors import BackboneNotFoundError, ConfigError, PretrainedWeightsUnavailableError


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """No network and no cache, whatever the machine: the fetch must fail fast, never hang."""

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hf_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"), raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("spec", ["timm/resnet18", "torchvision/resnet18"])
def test_pretrained_offline_says_how_to_fix(offline: None, spec: str) -> None:
    with pytest.raises(PretrainedWeightsUnavailableError) as err:
        build_backbone(spec, 3, pretrained=True)
    msg = str(err.value)
    assert spec in msg and "could not be downloaded" in msg
    assert "weights=" in msg and "pretrained=False" in msg


@pytest.mark.timeout(60)
def test_local_weights_skip_the_download(offline: None) -> None:
    sd = build_backbone("timm/resnet18", 3, pretrained=False).model.state_dict()
    bb = build_backbone("timm/resnet18", 5, pretrained=True, weights=sd)
    assert bb.model.fc.out_features == 5


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("resnet181", "timm/resnet18"),
        ("timm/resnet181", "timm/resnet18"),
        ("torchvision/resnet181", "torchvision/resnet18"),
    ],
)
def test_unknown_name_lists_close_names(spec: str, expected: str) -> None:
    with pytest.raises(BackboneNotFoundError, match=spec) as err:
        build_backbone(spec, 3, pretrained=False)
    assert f"'{expected}'" in str(err.value)


def test_bare_names_try_timm_then_torchvision() -> None:
    assert build_backbone("resnet18", 3, pretrained=False).spec == "timm/resnet18"
    assert build_backbone("mobilenet_v3_small", 3, pretrained=False).spec == "torchvision/mobilenet_v3_small"


def test_list_backbones() -> None:
    found = list_backbones("resnet18")
    assert "timm/resnet18" in found and "torchvision/resnet18" in found
    tv = list_backbones("torchvision/resnet*")
    assert tv and all(n.startswith("torchvision/resnet") for n in tv)
    assert len(list_backbones()) > 1000


def test_bad_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="num_classes=0"):
        build_backbone("timm/resnet18", 0, pretrained=False)
    with pytest.raises(ConfigError, match="head='fc'"):
        build_backbone("timm/resnet18", 3, pretrained=False, head="fc")
    with pytest.raises(ConfigError, match="image_size"):
        build_backbone("timm/resnet18", 3, pretrained=False, image_size=(0, 3))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="backbone 42"):
        build_backbone(42, 3)  # type: ignore[arg-type]


def test_timm_data_config_follows_the_weights() -> None:
    bb = build_backbone("timm/vit_base_patch16_224.augreg_in21k", 3, pretrained=False, image_size=32)
    cfg = bb.data_config
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5)
    assert cfg.interpolation == "bicubic" and cfg.crop_pct == pytest.approx(0.9)
    assert cfg.input_size == (3, 32, 32)
    assert bb.spec == "timm/vit_base_patch16_224.augreg_in21k"


def test_timm_native_input_size_without_image_size() -> None:
    cfg = build_backbone("timm/resnet18", 3, pretrained=False).data_config
    assert cfg.input_size == (3, 224, 224)


def test_torchvision_data_config_from_default_weights() -> None:
    cfg = build_backbone("torchvision/efficientnet_b0", 3, pretrained=False, image_size=(48, 64)).data_config
    assert cfg.interpolation == "bicubic"
    assert cfg.crop_pct == pytest.approx(224 / 256)
    assert cfg.mean == pytest.approx((0.485, 0.456, 0.406))
    assert cfg.input_size == (3, 48, 64)


def test_torchvision_vit_pretrained_size_is_checked() -> None:
    with pytest.raises(ConfigError, match="image_size=64"):
        build_backbone("torchvision/vit_b_16", 3, pretrained=True, image_size=64)


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("timm/vit_tiny_patch16_224", {"image_size": 32, "in_chans": 1}),
        ("torchvision/vit_b_16", {"image_size": 32}),
        ("torchvision/resnet18", {"in_chans": 4}),
    ],
)
def test_rebuild_recreates_the_architecture(spec: str, kwargs: dict) -> None:
    bb = build_backbone(spec, 6, pretrained=False, **kwargs)
    saved = json.loads(json.dumps(bb.build_kwargs))
    again = rebuild_backbone(saved, 6)
    assert again.spec == bb.spec and again.head_path == bb.head_path
    assert [g.name for g in again.groups] == [g.name for g in bb.groups]
    a, b = bb.model.state_dict(), again.model.state_dict()
    assert list(a) == list(b) and all(a[k].shape == b[k].shape for k in a)
    again.model.load_state_dict(a)
    assert again.data_config == bb.data_config


def test_rebuild_of_a_module_points_to_load_model() -> None:
    bb = build_backbone(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)), 2)
    with pytest.raises(ConfigError, match="model="):
        rebuild_backbone(bb.build_kwargs, 2)


def test_list_backbones_covers_both_registries_and_is_fast() -> None:
    import time

    import timm
    import torchvision

    everything = list_backbones()  # first call pays the imports
    start = time.perf_counter()
    again = list_backbones("*")
    elapsed = time.perf_counter() - start
    tv = torchvision.models.list_models(module=torchvision.models)
    assert everything == again and len(everything) == len(timm.list_models()) + len(tv)
    assert {n.split("/")[0] for n in everything} == {"timm", "torchvision"}
    assert elapsed < 1.0, f"list_backbones took {elapsed:.2f}s"  # ~0.01 s; generous for a loaded box
