"""Frozen-prefix feature cache: same results as the uncached path, and off (said in summary) when it
cannot be exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from torch import nn

from finetunekit import FineTuner
from finetunekit.strategies import FrozenBackbone, GradualUnfreeze


def _fit(cache: bool, make=None, strategy=None, epochs: int = 2, size: int = 16, **fit_kwargs):
    """Same seed, same initial weights (``make`` builds the model after seeding), cache on or off."""
    torch.manual_seed(0)
    x, y = make_images(96, 3, size)
    model = make() if make else TinyNet(num_classes=3)
    ft = FineTuner(model, num_classes=3, pretrained=False, seed=0, device="cpu",
                   image_size=size, strategy=strategy or FrozenBackbone())  # fmt: skip
    ft.compile(lr=1e-2)
    kwargs = {"augment": False, "batch_size": 16, **fit_kwargs}
    history = ft.fit(x, y, epochs=epochs, verbose=0, cache_features=cache, **kwargs)
    return ft, history


def _params(ft: FineTuner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in ft.model.state_dict().values()]


def test_cached_frozen_backbone_equals_uncached():
    cached, h1 = _fit(True, validation_split=0.25)
    plain, h2 = _fit(False, validation_split=0.25)
    assert "feature cache: on in epochs 0, 1" in cached.summary()
    assert "off: fit(cache_features=False)" in plain.summary()
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-5)
    assert not torch.equal(cached.model.fc.weight, TinyNet(num_classes=3).fc.weight)  # the head did train


def test_cached_epochs_skip_the_backbone():
    calls = []

    def make() -> nn.Module:
        model = TinyNet(num_classes=3)
        model.stem.register_forward_hook(lambda *a: calls.append(1))
        return model

    _fit(True, make=make, epochs=3)
    n_batches = 6  # 96 images / 16
    # one pass to build the cache, +1 for the cache's train-mode check, +1 for fit's preflight probe
    assert len(calls) <= n_batches + 2


def test_gradual_unfreeze_caches_only_the_head_phase():
    cached, _ = _fit(True, strategy=GradualUnfreeze(every=2), epochs=3)
    plain, _ = _fit(False, strategy=GradualUnfreeze(every=2), epochs=3)
    assert "on in epochs 0, 1:" in cached.summary()
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_augmentation_switches_it_off():
    ft, _ = _fit(True, augment=True)
    assert "feature cache: off: augmentation is on" in ft.summary()


def test_train_bn_switches_it_off():
    ft, _ = _fit(True, strategy=FrozenBackbone(train_bn=True))
    assert "feature cache: off: train_bn=True" in ft.summary()


def test_user_dataloader_switches_it_off():
    x, y = make_images(32, 3, 16)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xt, torch.from_numpy(y)), batch_size=8
    )
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu",
                   strategy=FrozenBackbone())  # fmt: skip
    ft.fit(loader, epochs=1, verbose=0)
    assert "off: the training data is your own DataLoader" in ft.summary()


class DropoutNet(TinyNet):
    """Dropout inside the frozen prefix: caching would freeze one dropout mask forever."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.stage1.append(nn.Dropout(0.5))


def test_dropout_in_frozen_layers_switches_it_off_and_results_stay_uncached():
    cached, _ = _fit(True, make=DropoutNet)
    plain, _ = _fit(False, make=DropoutNet)
    assert "off: the frozen layers act differently in train mode" in cached.summary()
    for a, b in zip(_params(cached), _params(plain), strict=True):
        assert torch.equal(a, b)  # the failed check left the run's RNG and BN buffers untouched


class HeadDropoutNet(TinyNet):
    """torchvision style: Dropout just before the classifier, in a Sequential: it runs live on the cache."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.fc = nn.Sequential(nn.Dropout(0.5), nn.Linear(16, 3))  # type: ignore[assignment]


def test_dropout_before_the_head_is_replayed_exactly():
    cached, _ = _fit(True, make=HeadDropoutNet)
    plain, _ = _fit(False, make=HeadDropoutNet)
    assert "feature cache: on" in cached.summary()
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_timm_head_dropout_is_replayed_exactly():
    import timm

    def make() -> nn.Module:
        return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=3, drop_rate=0.3)

    cached, _ = _fit(True, make=make, size=32)  # EfficientNet downsamples by 32
    plain, _ = _fit(False, make=make, size=32)
    assert "feature cache: on" in cached.summary()
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_summary_before_fit_says_when_the_cache_applies():
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu",
                   strategy=FrozenBackbone())  # fmt: skip
    assert ft.summary().splitlines()[-1].startswith("feature cache: decided by fit(): used in epochs where")


def test_fit_passes_num_workers_to_both_loaders(monkeypatch):
    import finetunekit.distributed.run as run_module

    seen = []
    original = run_module.make_loader

    def spy(*args, **kwargs):
        seen.append(kwargs.get("num_workers"))
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "make_loader", spy)
    _fit(True, epochs=1, validation_split=0.25, num_workers=0)
    assert seen == [0, 0]


def test_cache_under_bf16_autocast_matches_uncached():
    def run(cache: bool) -> FineTuner:
        torch.manual_seed(0)
        x, y = make_images(64, 3, 16)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                       image_size=16, strategy=FrozenBackbone())  # fmt: skip
        ft.compile(lr=1e-2, precision="bf16")
        ft.fit(x, y, epochs=2, batch_size=16, verbose=0, augment=False, cache_features=cache)
        return ft

    cached, plain = run(True), run(False)
    assert "feature cache: on" in cached.summary()
    torch.testing.assert_close(cached.model.fc.weight, plain.model.fc.weight, rtol=1e-2, atol=1e-3)
