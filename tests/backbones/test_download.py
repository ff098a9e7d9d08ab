"""Offline, pretrained=True fails in seconds with the fix; cached Hub weights still load (issue 14 item 11).

No test touches the network: the connection probe is replaced, and the Hub cache is a folder made here."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from finetunekit.backbones import build_backbone, download
from finetunekit.errors import PretrainedWeightsUnavailableError

UNREACHABLE = "huggingface.co:443 is unreachable (gaierror: [Errno -2] Name or service not known)"


@pytest.fixture
def hub_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """An empty Hugging Face cache of our own, and no HF_HUB_OFFLINE from the machine's environment."""
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "hub"


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, hub_cache: Path) -> list[str]:
    """The probe says the server is unreachable; any real connection attempt is a test failure."""
    probed: list[str] = []

    def probe(url: str, timeout: float = download.PROBE_TIMEOUT) -> str:
        probed.append(url)
        return UNREACHABLE

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a connection was attempted after the probe said the server is unreachable")

    monkeypatch.setattr(download, "unreachable", probe)
    monkeypatch.setattr("finetunekit.backbones.torchvision_adapter.unreachable", probe)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return probed


@pytest.mark.timeout(60)
def test_unreachable_hub_fails_at_once_naming_both_fixes(no_network: list[str]) -> None:
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError) as err:
        build_backbone("timm/resnet10t", 3, pretrained=True)
    assert time.perf_counter() - start < 10  # no retries with back-off
    msg = str(err.value)
    assert "'timm/resnet10t'" in msg and UNREACHABLE in msg
    assert "weights='path/to/file.safetensors'" in msg and "pretrained=False" in msg
    assert "set HF_HUB_OFFLINE=1" in msg
    assert no_network and no_network[0].startswith("https://huggingface.co")


@pytest.mark.timeout(60)
def test_hf_hub_offline_env_skips_the_probe(monkeypatch: pytest.MonkeyPatch, no_network: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        PretrainedWeightsUnavailableError, match=r"HF_HUB_OFFLINE=1 is set.*unset HF_HUB_OFFLINE"
    ):
        build_backbone("timm/resnet10t", 3, pretrained=True)
    assert no_network == []


@pytest.mark.timeout(60)
def test_cached_hub_weights_load_offline_without_waiting(no_network: list[str], hub_cache: Path) -> None:
    reference = build_backbone("timm/resnet10t", 3, pretrained=False).model
    weights = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()
    }
    snapshot = hub_cache / "models--timm--resnet10t.c3_in1k" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in weights.items()}, snapshot / "model.safetensors")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    built = build_backbone("timm/resnet10t", 3, pretrained=True)
    loaded = built.model.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], weights["conv1.0.weight"])
    assert torch.equal(loaded["layer4.0.conv2.weight"], weights["layer4.0.conv2.weight"])


@pytest.mark.timeout(60)
def test_torchvision_offline_fails_at_once(no_network: list[str]) -> None:
    with pytest.raises(PretrainedWeightsUnavailableError) as err:
        build_backbone("torchvision/resnet18", 3, pretrained=True)
    msg = str(err.value)
    assert "could not be downloaded: " + UNREACHABLE in msg
    assert "weights='path/to/file.pth'" in msg and "pretrained=False" in msg
    assert no_network == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]


def test_the_probe_reports_a_refused_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(address: tuple[str, int], timeout: float) -> None:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    reason = download.unreachable("https://huggingface.co/timm")
    assert (
        reason == "huggingface.co:443 is unreachable (ConnectionRefusedError: [Errno 111] Connection refused)"
    )
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.local:3128")
    assert download.unreachable("https://huggingface.co/timm").startswith("proxy.local:3128 is unreachable")


def test_the_quoted_cause_is_not_cut_mid_word() -> None:
    error = OSError("An error happened while trying to locate the file on the Hub and we cannot find it " * 4)
    text = download.short_cause(error, limit=60)
    assert text == "OSError: An error happened while trying to locate the file on the ..."
    assert download.short_cause(OSError("short")) == "OSError: short"
