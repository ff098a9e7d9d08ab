"""fit's default augment=True with a frozen backbone: the head trains on cached, un-augmented features,
said once; augment='always' keeps augmenting; other fits augment as before."""

from __future__ import annotations

import pytest
import torch
from helpers import TinyNet, make_images
from torch.utils.data import DataLoader, TensorDataset

from finetunekit import FineTuner
from finetunekit.errors import ConfigError
from finetunekit.strategies import FrozenBackbone, FullFineTune, GradualUnfreeze
from finetunekit.training.frozen_defaults import choose_augment

HEAD_ONLY = [None, None, 1.0]
ALL = [1.0, 1.0, 1.0]
X, Y = make_images(64, 3, 16)


def _choose(augment, plans=(HEAD_ONLY, HEAD_ONLY), data=X, cache_off=None, train_bn=False):
    return choose_augment(augment, list(plans), data, cache_off=cache_off, train_bn=train_bn)


def test_only_a_head_only_fit_with_the_default_drops_augmentation():
    choice = _choose(True)
    assert choice.augment is False and "only the head trains" in choice.note
    assert _choose(True, plans=(HEAD_ONLY, ALL)).augment is True  # something else trains later
    assert _choose(True, plans=(ALL,)).augment is True
    assert _choose("always") == _choose(True, cache_off="fit(cache_features=False)")
    assert _choose("always").augment is True and _choose("always").note is None
    assert _choose(False).augment is False and _choose(False).note is None
    assert _choose(True, train_bn=True).augment is True  # the cache cannot run: keep augmenting
    loader = DataLoader(TensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2)))
    assert _choose(True, data=loader).augment is True


@pytest.mark.parametrize("bad", ["yes", 1, "Always"])
def test_bad_augment_values_name_the_value(bad):
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, device="cpu", image_size=16)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    with pytest.raises(ConfigError, match=rf"augment={bad!r}.*'always'"):
        ft.fit(X, Y, epochs=1, verbose=0, augment=bad)
    assert all(torch.equal(before[k], v) for k, v in ft.model.state_dict().items())  # no step taken


def _fit(strategy, capsys=None, **fit_kwargs):
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                   image_size=16, strategy=strategy)  # fmt: skip
    ft.compile(lr=1e-2)
    ft.fit(X, Y, epochs=3, batch_size=16, **{"verbose": 0, **fit_kwargs})
    return ft


def _weights(ft: FineTuner) -> list[torch.Tensor]:
    return [t.detach().clone() for t in ft.model.state_dict().values()]


def test_frozen_backbone_default_trains_cached_unaugmented_and_says_so_once(capsys):
    default = _fit(FrozenBackbone(), verbose=2)
    out = capsys.readouterr().out
    assert out.count("augmentation: off, because only the head trains") == 1
    summary = default.summary()
    assert "feature cache: on in epochs 0-2: the head trained on cached backbone features" in summary
    assert "augmentation: off, because only the head trains" in summary
    plain = _fit(FrozenBackbone(), augment=False)
    assert all(torch.equal(a, b) for a, b in zip(_weights(default), _weights(plain), strict=True))
    assert "augmentation: off" not in plain.summary()  # the user's own choice: nothing to say


def test_always_keeps_augmenting_a_frozen_backbone_uncached():
    always = _fit(FrozenBackbone(), augment="always")
    assert "feature cache: off: augmentation is on" in always.summary()
    unaugmented = _fit(FrozenBackbone(), augment=False)
    assert not torch.equal(always.model.fc.weight, unaugmented.model.fc.weight)


@pytest.mark.parametrize("strategy", [FullFineTune(), GradualUnfreeze(every=1)])
def test_fits_that_train_more_than_the_head_augment_by_default(strategy):
    default = _fit(strategy)
    always = _fit(strategy, augment="always")
    assert all(torch.equal(a, b) for a, b in zip(_weights(default), _weights(always), strict=True))
    assert "augmentation: off" not in default.summary()
