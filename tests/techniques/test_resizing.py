"""compile(progressive_resizing=...): the training batches grow on the epoch schedule, validation stays
at full size, a resume is bitwise, a model that cannot take the small size fails before any step."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import TinyNet, make_images, on_global_step

from finetunekit import FineTuner, ProgressiveResizing
from finetunekit.callbacks import BackupAndRestore
from finetunekit.errors import ConfigError

X, Y = make_images(48, 3, 32, seed=1)
SMALL = ProgressiveResizing(initial_scale=0.5, finetune_fraction=0.2, size_increment=8)


def tuner(resizing: Any = SMALL) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=32, seed=0)
    return ft.compile(lr=0.05, progressive_resizing=resizing)


def test_the_schedule_grows_linearly_then_holds_the_full_size():
    sizes = ProgressiveResizing().sizes(10, (224, 224))
    # scale 0.5 + 0.5 * e / 8 for the first 8 epochs, rounded down to multiples of 32; the last 2 full
    expected = [int((0.5 + 0.5 * e / 8) * 224 // 32 * 32) for e in range(8)] + [224, 224]
    assert [h for h, _ in sizes] == expected and sizes[0] == (96, 96) and sizes[-2:] == [(224, 224)] * 2
    assert ProgressiveResizing(0.25, 0.0, 4).sizes(4, (64, 48)) == [(16, 12), (28, 20), (40, 28), (52, 36)]
    assert ProgressiveResizing().sizes(1, (224, 224)) == [(224, 224)]  # one epoch: full size
    # any finetune_fraction > 0 ends with a whole full-size epoch, however few the epochs
    assert ProgressiveResizing(0.5, 0.1, 8).sizes(2, (64, 64)) == [(32, 32), (64, 64)]
    assert ProgressiveResizing(0.5, 0.0, 8).sizes(2, (64, 64)) == [(32, 32), (48, 48)]
    assert ProgressiveResizing(0.5, 0.3, 8).sizes(10, (64, 64))[-4:-3] == [(56, 56)]  # 3 full, not 4


def test_training_batches_follow_the_schedule_and_validation_stays_full_size():
    ft = tuner()
    seen: list[tuple[bool, tuple[int, ...]]] = []
    ft.model.register_forward_pre_hook(lambda m, a: seen.append((m.training, tuple(a[0].shape[-2:]))))
    ft.fit(X, Y, batch_size=16, epochs=5, verbose=0, validation_split=0.25)
    counts = Counter(seen)
    # 36 training images: 3 batches per epoch; epochs 0-1 at 16, 2-3 at 24, 4 at 32; validation full
    assert counts[(True, (16, 16))] == 6 and counts[(True, (24, 24))] == 6 and counts[(True, (32, 32))] == 3
    assert counts[(False, (32, 32))] == 6  # 5 validation passes (one batch each) and the preflight probe
    text = ft.summary()
    assert "progressive resizing: epochs 0-1 at 16x16, 2-3 at 24x24, 4 at 32x32 (full)" in text
    assert "feature cache: off: progressive resizing is on" in text


def test_resizing_changes_training_and_false_leaves_it_bitwise():
    def weights(resizing: Any) -> dict[str, torch.Tensor]:
        ft = tuner(resizing)
        ft.fit(X, Y, batch_size=16, epochs=3, verbose=0, augment=False)
        return ft.model.state_dict()

    off, none, on = weights(False), weights(None), weights(SMALL)
    assert all(torch.equal(off[k], none[k]) for k in off)
    assert not all(torch.equal(off[k], on[k]) for k in off if k.endswith("weight"))


class Crash(Exception):
    pass


def test_a_resume_mid_epoch_is_bitwise(tmp_path: Path):
    def run(backup: Path | None, crash: int | None) -> dict[str, torch.Tensor] | None:
        ft = tuner()
        cbs: list[Any] = [] if backup is None else [BackupAndRestore(backup, save_freq=1)]
        if crash is not None:
            cbs.append(on_global_step(lambda step: (_ for _ in ()).throw(Crash()) if step == crash else None))
        try:
            ft.fit(X, Y, batch_size=16, epochs=5, verbose=0, callbacks=cbs)
        except Crash:
            return None
        return {k: v.clone() for k, v in ft.model.state_dict().items()}

    reference = run(None, None)
    assert run(tmp_path / "bk", crash=7) is None  # epoch 2 (the first at 24x24), batch 1
    resumed = run(tmp_path / "bk", None)
    assert reference is not None and resumed is not None
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_a_model_that_cannot_take_the_small_size_fails_before_any_step():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3
    )
    ft = FineTuner(vit, 3, device="cpu", image_size=32, seed=0).compile(progressive_resizing=SMALL)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"trains the first epochs at 16x16 .* dynamic_img_size=True"):
        ft.fit(X, Y, batch_size=16, epochs=5, verbose=0)
    assert all(torch.equal(v, ft.model.state_dict()[k]) for k, v in before.items())
    dynamic = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2, num_classes=3, dynamic_img_size=True
    )
    FineTuner(dynamic, 3, device="cpu", image_size=32, seed=0).compile(progressive_resizing=SMALL).fit(
        X, Y, batch_size=16, epochs=5, verbose=0
    )


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ProgressiveResizing(initial_scale=0), r"initial_scale=0\b"),
        (lambda: ProgressiveResizing(initial_scale=1.5), r"initial_scale=1\.5"),
        (lambda: ProgressiveResizing(finetune_fraction=-0.1), r"finetune_fraction=-0\.1"),
        (lambda: ProgressiveResizing(size_increment=0), r"size_increment=0"),
        (lambda: tuner("yes"), r"progressive_resizing='yes' is invalid"),
    ],
)
def test_bad_values_are_named(make: Any, match: str):
    with pytest.raises(ConfigError, match=match):
        make()
