"""Hub folders: timm itself loads what save_for_hub writes and predicts the same; "local-dir:" and
"hf-hub:" backbones build (from a folder, from the cache); offline errors come fast and name the fix."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from finetunekit import FineTuner
from finetunekit.backbones import hub_source
from finetunekit.errors import ConfigError, PretrainedWeightsUnavailableError
from finetunekit.tools import hub

timm = pytest.importorskip("timm")
NAMES = ["cat", "dog", "bird"]


def _tuner() -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner("timm/resnet18", num_classes=3, pretrained=False, image_size=32, device="cpu",
                   class_names=NAMES)  # fmt: skip
    params = dict(ft.model.named_parameters())
    with torch.no_grad():
        for name in ft.groups[-1].param_names:
            params[name].normal_(0, 1.0)
    return ft


@pytest.fixture
def saved(tmp_path: Path) -> tuple[FineTuner, Path]:
    ft = _tuner()
    ft.temperature = 1.5
    return ft, ft.save_for_hub(tmp_path / "digits-r18", metrics={"val_accuracy": 0.875})


def test_timm_loads_the_folder_and_predicts_the_same(saved: tuple[FineTuner, Path]) -> None:
    ft, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), ft.model.eval()(x).numpy())
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "resnet18" and config["num_classes"] == 3
    assert config["label_names"] == NAMES
    assert config["finetunekit"]["temperature"] == 1.5
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, 32, 32) and data["crop_pct"] == 1.0
    assert tuple(data["mean"]) == pytest.approx(ft.data_config.mean)
    card = (folder / "README.md").read_text()
    assert "library_name: timm" in card and "| val_accuracy | 0.8750 |" in card
    assert "FullFineTune" in card and "`cat`, `dog`, `bird`" in card


def test_timm_preprocessing_of_the_folder_reproduces_predict(saved: tuple[FineTuner, Path]) -> None:
    from PIL import Image

    ft, folder = saved
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with torch.no_grad():
        timm_probs = torch.softmax(model(transform(Image.fromarray(image)).unsqueeze(0)) / 1.5, 1).numpy()
    np.testing.assert_allclose(timm_probs, ft.predict(image[None]), atol=1e-5)


def test_local_dir_backbone_and_save_load_offline(saved: tuple[FineTuner, Path], tmp_path: Path) -> None:
    ft, folder = saved
    other = FineTuner(f"local-dir:{folder}", num_classes=5, device="cpu")
    assert other.spec == f"timm/local-dir:{folder}"
    mine, theirs = ft.model.state_dict(), other.model.state_dict()
    head = set(other.groups[-1].param_names)
    for key, value in theirs.items():
        if key not in head and not key.startswith("fc."):
            assert torch.equal(value, mine[key]), key
    other.save(tmp_path / "run")
    loaded = FineTuner.load(tmp_path / "run", device="cpu")  # rebuilt from the architecture name, offline
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(loaded.model.eval()(x).numpy(), other.model.eval()(x).numpy())


def test_hf_hub_backbone_from_the_cache_when_the_hub_is_unreachable(
    saved: tuple[FineTuner, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    _, folder = saved
    snapshot = tmp_path / "cache" / "models--me--digits" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "cache" / "models--me--digits" / "refs").mkdir()
    (tmp_path / "cache" / "models--me--digits" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hub_source, "hub_reachable", lambda timeout=3.0: False)
    ft = FineTuner("hf-hub:me/digits", num_classes=3, device="cpu")
    assert ft.spec == "timm/hf-hub:me/digits" and constants.HF_HUB_OFFLINE is False


def test_hf_hub_offline_fails_fast_and_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(PretrainedWeightsUnavailableError, match="hf download someone/missing --local-dir"):
        FineTuner("hf-hub:someone/missing", num_classes=3, device="cpu")
    assert time.perf_counter() - start < 10
    with pytest.raises(hub.HubError, match="did not answer"):
        _tuner().push_to_hub("me/digits")


def test_local_dir_without_config_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="has no config.json"):
        FineTuner(f"local-dir:{tmp_path}", num_classes=3, device="cpu")


class FakeApi:
    uploads: ClassVar[list[tuple[str, list[str], str]]] = []

    def __init__(self, token: str | None = None, **kwargs: Any) -> None:
        self.token = token

    def create_repo(self, repo_id: str, private: bool = False, exist_ok: bool = False) -> Any:
        return type("Url", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id: str, folder_path: str, commit_message: str) -> Any:
        files = sorted(p.name for p in Path(folder_path).iterdir())
        FakeApi.uploads.append((repo_id, files, (Path(folder_path) / "README.md").read_text()))
        return type("Info", (), {"commit_url": f"https://hub.example/{repo_id}/commit/1"})()


def test_push_uploads_the_hub_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub_source, "hub_reachable", lambda timeout=3.0: True)
    url = _tuner().push_to_hub("me/digits-r18", token="t")
    assert url == "https://hub.example/me/digits-r18/commit/1"
    repo, files, card = FakeApi.uploads[-1]
    assert repo == "me/digits-r18" and files == ["README.md", "config.json", "model.safetensors"]
    assert "# digits-r18" in card


def test_bad_repo_ids_and_non_timm_models_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="repo_id='no-owner'"):
        _tuner().push_to_hub("no-owner")
    ft = FineTuner("torchvision/mobilenet_v3_small", num_classes=3, pretrained=False, device="cpu")
    with pytest.raises(ConfigError, match="needs a timm backbone"):
        ft.save_for_hub(tmp_path / "x")
