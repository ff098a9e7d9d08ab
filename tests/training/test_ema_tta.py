"""EMA of the weights (evaluated and saved when on) and flip test-time augmentation."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from helpers import TinyNet, make_images

from finetunekit import FineTuner


def _fitted(ema_decay=None) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(
        TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu", seed=0
    )
    ft.compile(lr=1e-2, ema_decay=ema_decay)
    x, y = make_images(48, 3, 16)
    ft.fit(x, y, batch_size=8, epochs=2, verbose=0, augment=False, validation_split=0.25)
    return ft


def test_ema_weights_are_the_moving_average_and_are_evaluated_and_saved(tmp_path):
    ft = _fitted(ema_decay=0.9)
    ema, live = ft.eval_model.state_dict(), ft.model.state_dict()
    assert not torch.equal(ema["fc.weight"], live["fc.weight"])
    assert ft.eval_model is not ft.model
    x, y = make_images(30, 3, 16, seed=1)
    result = ft.evaluate(x, y)
    ft_plain = FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu")
    ft_plain.model.load_state_dict(ema)
    assert result == ft_plain.evaluate(x, y)
    ft.save(tmp_path / "run")
    loaded = FineTuner.load(tmp_path / "run", model=TinyNet(num_classes=3))
    for key, value in ema.items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_no_ema_evaluates_the_model_itself():
    ft = _fitted()
    assert ft.eval_model is ft.model


def test_predict_tta_averages_image_and_mirror_probabilities():
    ft = _fitted()
    x, y = make_images(20, 3, 16, seed=2)
    mirrored = np.ascontiguousarray(x[:, :, ::-1])
    expected = (ft.predict(x) + ft.predict(mirrored)) / 2
    got = ft.predict(x, tta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, ft.predict(x), atol=1e-4)  # flipping changed something
    result = ft.evaluate(x, y, tta=True)
    nll = F.nll_loss(torch.from_numpy(expected).log(), torch.from_numpy(y)).item()
    assert abs(result["loss"] - nll) < 1e-5
    assert result["accuracy"] == float((expected.argmax(1) == y).mean())


def test_weight_ema_lerps_trainable_params_and_float_buffers_only():
    from finetunekit.training.step import make_ema

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    model[1].weight.requires_grad_(False)
    ema = make_ema(model, decay=0.75)
    old = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
        model[1].running_mean.add_(4.0)
    ema.update()
    state = ema.module.state_dict()
    torch.testing.assert_close(state["0.weight"], old["0.weight"] + 0.25)
    torch.testing.assert_close(state["1.running_mean"], old["1.running_mean"] + 1.0)
    assert torch.equal(state["1.weight"], old["1.weight"])  # frozen: skipped (it equals its average)
