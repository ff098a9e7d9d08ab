"""Float images whose value range contradicts the backbone's normalization warn once, concretely."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from finetunekit.backbones.base import DataConfig
from finetunekit.data import normcheck, prepare_data

IMAGENET = DataConfig(input_size=(3, 16, 16))
HALF = DataConfig(input_size=(3, 16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(normcheck, "_WARNED", set())


def prep(x: torch.Tensor, cfg: DataConfig = IMAGENET, in_chans: int = 3) -> None:
    prepare_data(x, None, data_config=cfg, in_chans=in_chans, augment=False, require_labels=False,
                 num_classes=None, what="x")  # fmt: skip


def normalized(x01: torch.Tensor, cfg: DataConfig) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, -1, 1, 1)
    std = torch.tensor(cfg.std).view(1, -1, 1, 1)
    return (x01 - mean) / std


def images01(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def messages(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record]


def test_unnormalized_unit_range_warns_once_with_the_expected_stats() -> None:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        prep(images01())
        prep(images01(seed=1))  # the same mistake again: no second warning
    msgs = [m for m in messages(record) if "normalized" in m]
    assert len(msgs) == 1
    assert "[0, 1]" in msgs[0] and "ToTensor()" in msgs[0]
    assert "mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)" in msgs[0]
    assert "min (-2.12, -2.04, -1.8), max (2.25, 2.43, 2.64)" in msgs[0]


def test_half_normalization_for_an_imagenet_model_warns() -> None:
    with pytest.warns(UserWarning, match=r"mean=0\.5, std=0\.5"):
        prep(normalized(images01(), HALF))


def test_imagenet_normalization_for_a_half_model_warns_out_of_range() -> None:
    with pytest.warns(UserWarning, match=r"outside the range.*mean=\(0\.5, 0\.5, 0\.5\)"):
        prep(normalized(images01(), IMAGENET), HALF)


@pytest.mark.parametrize("cfg", [IMAGENET, HALF], ids=["imagenet", "half"])
def test_correctly_normalized_data_is_silent(cfg: DataConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prep(normalized(images01(), cfg), cfg)


def test_dark_data_set_normalized_correctly_is_silent_although_its_mean_is_far_from_zero() -> None:
    from sklearn.datasets import load_digits

    dim = load_digits().images[:64] / 32.0  # dim digits on black: pixel values in [0, 0.5]
    x = normalized(torch.from_numpy(dim).float()[:, None].repeat(1, 3, 1, 1), IMAGENET)
    assert float(x.mean()) < -1.2  # a moment rule ("mean far from 0") would flag this correct data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prep(x)


def test_grayscale_uses_the_averaged_statistics() -> None:
    with pytest.warns(UserWarning, match=r"mean=\(0\.449\)"):
        prep(images01()[:, :1], IMAGENET, in_chans=1)


def test_diagnose_is_none_inside_the_valid_range() -> None:
    lo, hi = torch.tensor([-2.0]), torch.tensor([2.0])
    assert normcheck.diagnose(torch.tensor([-1.9]), torch.tensor([2.1]), lo, hi) is None
    assert normcheck.diagnose(torch.tensor([-3.0]), torch.tensor([2.0]), lo, hi) == "range"
    assert normcheck.diagnose(torch.tensor([0.0]), torch.tensor([1.0]), lo, hi) == "unit"


def test_fit_and_evaluate_warn_once_in_total(tiny_net: torch.nn.Module) -> None:
    from finetunekit import FineTuner

    ft = FineTuner(tiny_net, 3, image_size=16, device="cpu", seed=0)
    x, y = images01(12), np.arange(12) % 3
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ft.fit(x, y, epochs=1, batch_size=6, verbose=0)
        ft.evaluate(x, y)
    assert len([m for m in messages(record) if "ToTensor()" in m]) == 1
