"""Frozen-prefix feature cache: same results as the uncached path, and off (said in summary) when it
cannot be exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images, on_global_step
from torch import nn

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore, Callback
from finetunekit.strategies import LPFT, FrozenBackbone, GradualUnfreeze
from finetunekit.training.feature_cache import _epochs_text


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


def _status(ft: FineTuner) -> str:
    return next(line for line in ft.summary().splitlines() if line.startswith("feature cache: "))


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
    # one pass to build the cache, +2 for the cache's check (eval and train mode), +1 for fit's preflight
    assert len(calls) <= n_batches + 3


class StemCalls(Callback):
    """How often the stem's convolution really ran in each epoch (a short-circuited stem does not run it)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[int] = []
        self.per_epoch: list[int] = []
        model.stem[0].register_forward_hook(lambda *a: self.calls.append(1))

    def on_epoch_begin(self, epoch, logs=None):
        self.start = len(self.calls)

    def on_epoch_end(self, epoch, logs=None):
        self.per_epoch.append(len(self.calls) - self.start)


def test_gradual_unfreeze_caches_every_phase_with_a_frozen_prefix():
    """TinyNet's groups are stem, stage1, head. every=2: epochs 0-1 train the head (head cut), 2-3 train
    stage1 and the head on the stem's cached outputs (prefix cut), 4-5 train everything."""
    strategy = GradualUnfreeze(every=2)
    cached, h1 = _fit(True, strategy=strategy, epochs=6, validation_split=0.25)
    plain, h2 = _fit(False, strategy=strategy, epochs=6, validation_split=0.25)
    status = _status(cached)
    assert "on in epochs 0, 1: the head trained on cached backbone features" in status
    assert (
        "on in epochs 2, 3: the layers after 'stem' trained on its cached outputs (8x16x16 values" in status
    )
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for key in ("loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h1.history[key], h2.history[key], rtol=1e-5)
    assert not torch.equal(cached.model.stage1[0].weight, TinyNet(num_classes=3).stage1[0].weight)  # trained
    assert "forward" not in vars(cached.model.stem)  # the short-circuit is undone after every call


def test_cached_prefix_epochs_skip_the_frozen_layers():
    model = TinyNet(num_classes=3)
    calls = StemCalls(model)
    _fit(True, make=lambda: model, strategy=GradualUnfreeze(milestones={0: 2}), epochs=3,
         callbacks=[calls])  # fmt: skip
    n_batches = 6
    assert calls.per_epoch[1] == calls.per_epoch[2] == 0  # stem ran in none of the cached epochs
    assert n_batches <= calls.per_epoch[0] <= n_batches + 3  # build + trace and check on a few samples


def test_a_phase_of_one_epoch_is_not_cached():
    cached, _ = _fit(True, strategy=GradualUnfreeze(every=1), epochs=3)
    plain, _ = _fit(False, strategy=GradualUnfreeze(every=1), epochs=3)
    status = _status(cached)
    assert status == (
        "feature cache: not used in epochs 0, 1: these layers stay frozen for one epoch only, so caching "
        "would save nothing"
    )
    for a, b in zip(_params(cached), _params(plain), strict=True):
        assert torch.equal(a, b)


class SkipNet(nn.Module):
    """Groups stem, mid, top, head; ``top`` also reads the stem's output, so a cut after ``mid`` would
    lose that input while a cut after ``stem`` is exact."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.top = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.stem(x)
        return self.fc((self.top(self.mid(a)) + a).mean(dim=(2, 3)))


def test_a_connection_across_the_cut_switches_it_off_for_that_phase_only():
    strategy = GradualUnfreeze(every=2)
    cached, _ = _fit(True, make=SkipNet, strategy=strategy, epochs=6)
    plain, _ = _fit(False, make=SkipNet, strategy=strategy, epochs=6)
    status = _status(cached)
    assert "on in epochs 0, 1: the head trained" in status
    assert (
        "off in epochs 2, 3: the model's output is not the trainable layers applied to the cached" in status
    )
    assert "a connection skips the cut" in status
    assert "on in epochs 4, 5: the layers after 'stem' trained on its cached outputs" in status
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "size", "cuts"),
    [
        ("torchvision/resnet18", 32, ["'layer3'", "'layer2'"]),
        ("timm/vit_tiny_patch16_224", 32, ["'blocks.10'", "'blocks.9'"]),  # root-level pos_embed runs live
        # 64 px: at 32 px its last stages are 1x1, where train-mode BatchNorm over a batch of 4 turns
        # float noise (CPU kernels are not bitwise batch-invariant) into visible weight differences.
        ("timm/efficientnet_lite0", 64, ["'blocks.5'", "'blocks.4'"]),
    ],
)
def test_real_architectures_cache_each_prefix_and_match_uncached(spec, size, cuts):
    def run(cache: bool) -> tuple[FineTuner, dict]:
        torch.manual_seed(0)
        x, y = make_images(48, 3, size)
        ft = FineTuner(spec, num_classes=3, pretrained=False, seed=0, device="cpu", image_size=size,
                       strategy=GradualUnfreeze(every=2))  # fmt: skip
        # SGD: Adam turns float-level gradient noise on near-zero gradients into steps of size lr, which
        # would hide whether the cache is exact.
        ft.compile(lr=1e-2, optimizer="sgd")
        history = ft.fit(x, y, epochs=6, batch_size=16, verbose=0, augment=False, cache_features=cache,
                         validation_split=0.25)  # fmt: skip
        return ft, history.history

    (cached, h1), (plain, h2) = run(True), run(False)
    status = _status(cached)
    assert "on in epochs 0, 1: the head trained" in status
    assert f"on in epochs 2, 3: the layers after {cuts[0]}" in status
    assert f"on in epochs 4, 5: the layers after {cuts[1]}" in status
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(h1[key], h2[key], rtol=1e-4)
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_epoch_lists_in_the_summary_line():
    assert _epochs_text([3]) == "epoch 3"
    assert _epochs_text([0, 1]) == "epochs 0, 1"
    assert _epochs_text([0, 1, 2, 3, 4, 5]) == "epochs 0-5"
    assert _epochs_text([0, 1, 2, 5, 6]) == "epochs 0-2, 5, 6"


def test_mixup_switches_it_off_and_says_why():
    torch.manual_seed(0)
    x, y = make_images(32, 3, 16)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                   image_size=16, strategy=FrozenBackbone())  # fmt: skip
    ft.compile(mixup=0.2)
    ft.fit(x, y, epochs=2, batch_size=16, verbose=0, augment=False)
    assert _status(ft) == (
        "feature cache: off: mixup/CutMix is on (the features of mixed images are not mixed features)"
    )


def test_augmentation_switches_it_off():
    ft, _ = _fit(True, augment="always")  # augment=True would train a frozen backbone's head un-augmented
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
    assert "off in epochs 0, 1: the frozen layers act differently in train mode" in cached.summary()
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


class InplaceHeadNet(TinyNet):
    """In-place activation and dropout right before the head (torchvision's MobileNet/VGG classifiers):
    they run live on every cached batch and must not overwrite the cache itself."""

    def __init__(self) -> None:
        super().__init__(num_classes=3)
        self.fc = nn.Sequential(nn.ReLU(inplace=True), nn.Dropout(0.5, inplace=True), nn.Linear(16, 3))  # type: ignore[assignment]


def test_inplace_modules_before_the_head_are_replayed_exactly():
    cached, _ = _fit(True, make=InplaceHeadNet, epochs=3)
    plain, _ = _fit(False, make=InplaceHeadNet, epochs=3)
    assert "feature cache: on in epochs 0-2: the head trained" in cached.summary()
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
    assert _status(ft).startswith("feature cache: decided by fit(): used while the bottom")


def test_fit_passes_num_workers_to_both_loaders(monkeypatch):
    import finetunekit.training.distributed as run_module

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


class Crash(Exception):
    pass


def test_resume_in_the_middle_of_a_cached_prefix_epoch_matches_the_uninterrupted_run(tmp_path):
    """A crash in epoch 3 (stage1 and the head train on the stem's cached outputs): the resumed run
    finishes that epoch uncached from the saved loop position and caches again in the next phase."""
    strategy = GradualUnfreeze(every=2)

    def run(crash_step: int | None, backup: bool) -> FineTuner | None:
        torch.manual_seed(0)
        x, y = make_images(96, 3, 16)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                       image_size=16, strategy=strategy)  # fmt: skip
        ft.compile(lr=1e-2)
        cbs: list[Callback] = [BackupAndRestore(tmp_path / "backup", save_freq=2)] if backup else []

        def maybe_crash(step: int) -> None:
            if step == crash_step:
                raise Crash

        cbs.append(on_global_step(maybe_crash))
        try:
            ft.fit(x, y, epochs=6, batch_size=16, verbose=0, augment=False, callbacks=cbs)
        except Crash:
            return None
        return ft

    assert run(crash_step=3 * 6 + 3, backup=True) is None  # epoch 3, batch 3
    resumed = run(crash_step=None, backup=True)
    straight = run(crash_step=None, backup=False)
    assert resumed is not None and straight is not None
    assert _status(resumed) == (
        "feature cache: off in epoch 3: resumed in the middle of the epoch, the rest of it ran uncached"
    )  # and every group trains in epochs 4-5
    assert "on in epochs 2, 3: the layers after 'stem'" in _status(straight)
    for a, b in zip(_params(resumed), _params(straight), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_prefix_cache_under_bf16_autocast_and_channels_last_matches_uncached():
    def run(cache: bool) -> FineTuner:
        torch.manual_seed(0)
        x, y = make_images(64, 3, 16)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                       image_size=16, strategy=GradualUnfreeze(milestones={0: 2}))  # fmt: skip
        ft.compile(lr=1e-2, precision="bf16", channels_last=True)
        ft.fit(x, y, epochs=3, batch_size=16, verbose=0, augment=False, cache_features=cache)
        return ft

    cached, plain = run(True), run(False)
    assert "on in epochs 0-2: the layers after 'stem'" in _status(cached)
    for name in ("stage1.0.weight", "fc.weight"):
        torch.testing.assert_close(
            cached.model.state_dict()[name], plain.model.state_dict()[name], rtol=1e-2, atol=1e-3
        )


def test_with_ema_training_is_cached_and_validation_runs_the_ema_model():
    def run(cache: bool) -> tuple[FineTuner, dict]:
        torch.manual_seed(0)
        x, y = make_images(96, 3, 16)
        ft = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, seed=0, device="cpu",
                       image_size=16, strategy=GradualUnfreeze(milestones={0: 2}))  # fmt: skip
        ft.compile(lr=1e-2, ema_decay=0.9)
        h = ft.fit(x, y, epochs=3, batch_size=16, verbose=0, augment=False, cache_features=cache,
                   validation_split=0.25)  # fmt: skip
        return ft, h.history

    (cached, h1), (plain, h2) = run(True), run(False)
    assert "on in epochs 0-2" in _status(cached)
    np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-5)
    for a, b in zip(
        cached.eval_model.state_dict().values(), plain.eval_model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_lpft_probe_of_two_epochs_is_cached():
    cached, _ = _fit(True, strategy=LPFT(probe_epochs=2), epochs=3)
    plain, _ = _fit(False, strategy=LPFT(probe_epochs=2), epochs=3)
    assert _status(cached).startswith("feature cache: on in epochs 0, 1: the head trained")
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class ShortcutBlock(nn.Module):
    """Its parameter-free shortcut pooling runs before its first trainable layer (as in MaxViT's MBConv)."""

    def __init__(self) -> None:
        super().__init__()
        self.shortcut = nn.AvgPool2d(2)
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv(x)


class ShortcutNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = ShortcutBlock()
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.block(self.stem(x)).mean(dim=(2, 3)))


def test_the_cut_is_the_trainable_blocks_input_not_a_pooling_inside_it():
    strategy = GradualUnfreeze(milestones={0: 2})
    cached, _ = _fit(True, make=ShortcutNet, strategy=strategy, epochs=3)
    plain, _ = _fit(False, make=ShortcutNet, strategy=strategy, epochs=3)
    assert "on in epochs 0-2: the layers after 'stem' trained on its cached outputs" in _status(cached)
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_models_that_refuse_load_state_dict_without_metadata_still_cache():
    """torchvision's MNASNet raises in load_state_dict without version metadata; the check restores the
    BatchNorm buffers in place instead (this used to crash fit)."""

    def make() -> nn.Module:
        import torchvision

        return torchvision.models.mnasnet0_5(num_classes=3)

    cached, _ = _fit(True, make=make, size=32)
    plain, _ = _fit(False, make=make, size=32)
    assert "on in epochs 0, 1: the head trained" in _status(cached)
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class SizedStem(nn.Module):
    """Returns its features with their spatial size, as MViT's and Twins' patch embeddings do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class TokenNet(nn.Module):
    """stem -> (tokens, size) -> mid (frozen in phase 2, also returns the size) -> top -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = SizedStem()
        self.mid = nn.Linear(8, 8)
        self.top = nn.Linear(8, 8)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (h, w) = self.stem(x)
        grid = self.top(self.mid(tokens)).transpose(1, 2).reshape(-1, 8, h, w)
        return self.fc(grid.mean(dim=(2, 3)))


def test_a_frozen_module_returning_a_tuple_with_its_size_is_replayed():
    """The cut module returns (tokens, (h, w)): the tokens are cached, the size is replayed as recorded."""
    strategy = GradualUnfreeze(milestones={0: 3})  # stem frozen; mid, top and the head train
    cached, _ = _fit(True, make=TokenNet, strategy=strategy, epochs=3)
    plain, _ = _fit(False, make=TokenNet, strategy=strategy, epochs=3)
    assert "on in epochs 0-2: the layers after 'stem' trained on its cached outputs (64x8 values" in _status(
        cached
    )
    for a, b in zip(_params(cached), _params(plain), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


class CountingStem(SizedStem):
    """Returns the batch size as a constant: replaying a recorded value would be wrong for other batches."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:  # type: ignore[override]
        tokens, _ = super().forward(x)
        return tokens, (len(x), 64)


class CountingNet(TokenNet):
    def __init__(self) -> None:
        super().__init__()
        self.stem = CountingStem()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens, (n, hw) = self.stem(x)
        grid = self.top(self.mid(tokens)).reshape(n, hw, 8)
        return self.fc(grid.mean(dim=1))


def test_a_recorded_value_that_depends_on_the_batch_size_switches_it_off():
    strategy = GradualUnfreeze(milestones={0: 3})
    cached, _ = _fit(True, make=CountingNet, strategy=strategy, epochs=3)
    plain, _ = _fit(False, make=CountingNet, strategy=strategy, epochs=3)
    assert _status(cached).startswith("feature cache: off in epochs 0-2: ")
    for a, b in zip(_params(cached), _params(plain), strict=True):
        assert torch.equal(a, b)
