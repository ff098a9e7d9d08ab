"""fit(augment=...): presets, timm strings, user transforms, random erasing; resize and normalization
always stay, randomness comes from torch's RNG only, unknown values raise."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from torchvision.transforms import v2

from finetunekit import FineTuner
from finetunekit.backbones.base import DataConfig
from finetunekit.data.augment import Augment
from finetunekit.data.transforms import ImageTransform
from finetunekit.errors import ConfigError, DataError

CONFIG = DataConfig(input_size=(3, 24, 24), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
POLICIES = [True, "light", "randaugment", "trivialaugment", "autoaugment", "rand-m9-mstd0.5",
            "rand-m7-n3-mstd0.5-inc1", "augmix-m5-w4-d2", "original", Augment("randaugment", erasing=0.5),
            v2.RandomRotation(30)]  # fmt: skip


def _image(seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(make_images(1, 3, size=32, seed=seed)[0][0]).permute(2, 0, 1).contiguous()


@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_each_policy_is_seeded_by_torch_alone_and_keeps_resize_and_normalization(policy):
    transform = ImageTransform(CONFIG, 3, policy)
    image = _image()
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        random.seed(123)  # Python's and numpy's RNGs must neither matter nor move
        np.random.seed(5)
        outs.append(transform(image))
        assert random.random() == random.Random(123).random()
        assert np.random.rand() == np.random.RandomState(5).rand()
    assert outs[0].shape == (3, 24, 24) and outs[0].dtype == torch.float32
    assert torch.equal(outs[0], outs[1])
    mean, std = torch.tensor(CONFIG.mean).view(3, 1, 1), torch.tensor(CONFIG.std).view(3, 1, 1)
    pixels = outs[0] * std + mean  # undo the backbone's normalization: back in [0, 1]
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    draws = {transform(image).sum().item() for _ in range(4)}
    assert len(draws) > 1  # it does augment


def test_a_user_transform_replaces_crop_and_flip_but_resize_and_normalize_stay():
    image = _image()
    identity = ImageTransform(CONFIG, 3, v2.Lambda(lambda x: x))
    assert torch.equal(identity(image), ImageTransform(CONFIG, 3, False)(image))
    flipped = ImageTransform(CONFIG, 3, v2.RandomHorizontalFlip(p=1.0))(image)
    assert torch.equal(flipped, ImageTransform(CONFIG, 3, False)(image).flip(-1))


def test_random_erasing_erases_a_rectangle_of_the_normalized_image():
    torch.manual_seed(0)
    out = ImageTransform(CONFIG, 3, Augment("light", erasing=1.0))(_image())
    assert (out == 0).all(0).sum() > 10  # value 0 = the mean colour, in every channel


@pytest.mark.parametrize(
    ("value", "needle"),
    [("randaugmentx", "'randaugmentx'"), ("heavy", "'heavy'"), (3, "augment=3"),
     (v2.RandAugment, "augment=<class"), (Augment, "augment=<class")],
)  # fmt: skip
def test_unknown_augment_values_raise(value, needle):
    with pytest.raises(ConfigError, match=needle):
        ImageTransform(CONFIG, 3, value)


def test_augment_options_are_checked():
    with pytest.raises(ConfigError, match="erasing=2"):
        Augment(erasing=2)
    with pytest.raises(ConfigError, match="crop_scale"):
        Augment(crop_scale=(0.0, 1.0))


def test_colour_policies_refuse_float_images():
    x = torch.randn(4, 3, 16, 16)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu")
    with pytest.raises(DataError, match="uint8"):
        ft.fit(x, np.arange(4) % 3, epochs=1, verbose=0, augment="randaugment")


def test_fit_with_a_policy_trains_and_an_unknown_one_fails_before_any_step():
    x, y = make_images(16, 3)
    ft = FineTuner(
        TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu", seed=0
    )
    before = [p.clone() for p in ft.model.parameters()]
    with pytest.raises(ConfigError, match="'randaug'"):
        ft.fit(x, y, epochs=1, verbose=0, augment="randaug")
    assert all(torch.equal(a, b) for a, b in zip(before, ft.model.parameters(), strict=True))
    ft.fit(x, y, epochs=1, batch_size=8, verbose=0, augment="trivialaugment")
    assert not all(torch.equal(a, b) for a, b in zip(before, ft.model.parameters(), strict=True))


@pytest.mark.parametrize("preprocessed", [False, True], ids=["uint8", "float"])
def test_augment_flip_and_crop_scale_are_honoured_for_uint8_and_float_images(preprocessed):
    """Augment(flip=False, crop_scale=(1, 1)) leaves an image whole and unflipped; flip=True flips some
    draws. Float (already normalized) images take the same options as uint8 ones."""
    image = _image()[:, :24, :24]
    plain = ImageTransform(CONFIG, 3, False)(image)

    def draws(policy: Augment) -> list[torch.Tensor]:
        transform = ImageTransform(CONFIG, 3, policy)
        torch.manual_seed(0)
        if preprocessed:
            return [transform.augment_preprocessed(plain) for _ in range(12)]
        return [transform(image) for _ in range(12)]

    for out in draws(Augment(flip=False, crop_scale=(1.0, 1.0))):
        assert torch.allclose(out, plain, atol=1e-5)
    flips = draws(Augment(crop_scale=(1.0, 1.0)))
    flipped = [torch.allclose(out, plain.flip(-1), atol=1e-5) for out in flips]
    assert any(flipped) and not all(flipped)
