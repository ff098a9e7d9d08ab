"""Resisting forgetting: L2-SP penalty and its effect, WiSE-FT interpolation, RetentionMonitor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet

from finetunekit import L2SP, FineTuner
from finetunekit.backbones.snapshot import relative_change
from finetunekit.callbacks import RetentionMonitor
from finetunekit.errors import ConfigError
from finetunekit.tools import wise


def _tuner(seed: int = 0) -> FineTuner:
    torch.manual_seed(seed)
    return FineTuner(TinyNet(), num_classes=3, image_size=16, seed=seed)


def _backbone(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ft.model.state_dict().items() if not k.startswith("fc.")}


def _head(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ft.model.state_dict().items() if k.startswith("fc.")}


def test_l2sp_penalty_equals_the_formula_and_skips_frozen_groups() -> None:
    ft = _tuner()
    w0 = {n: p.detach().clone() for n, p in ft.model.named_parameters()}
    with torch.no_grad():
        for p in ft.model.parameters():
            p.add_(0.1)
    reg = L2SP(alpha=0.3, beta=0.05).bind(ft)
    params = dict(ft.model.named_parameters())
    backbone = sum(((params[n] - w0[n]) ** 2).sum() for n in params if not n.startswith("fc."))
    expected = 0.3 / 2 * backbone + 0.05 / 2 * (params["fc.weight"] ** 2).sum()  # head bias: no decay
    assert float(reg().detach()) == pytest.approx(float(expected.detach()), rel=1e-6)
    for n, p in params.items():
        p.requires_grad_(n.startswith("fc."))
    assert float(reg().detach()) == pytest.approx(
        0.05 / 2 * float((params["fc.weight"].detach() ** 2).sum()), rel=1e-6
    )


def test_l2sp_sets_decoupled_weight_decay_to_zero_and_rejects_bad_values() -> None:
    ft = _tuner().compile(weight_decay=0.05, regularizer=L2SP(0.01, 0.01))
    assert ft.optimizer is not None
    assert all(pg["weight_decay"] == 0.0 for pg in ft.optimizer.param_groups)
    plain = _tuner().compile(weight_decay=0.05)
    assert (
        plain.optimizer is not None and max(pg["weight_decay"] for pg in plain.optimizer.param_groups) == 0.05
    )
    with pytest.raises(ConfigError, match="alpha=-1"):
        L2SP(alpha=-1)
    with pytest.raises(ConfigError, match="not callable"):
        _tuner().compile(regularizer=0.1)


def test_l2sp_moves_backbone_less_than_plain_finetuning(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    changes = {}
    for name, reg in (("plain", None), ("l2sp", L2SP(alpha=1.0, beta=0.0))):
        ft = _tuner()
        ft.compile(lr=1e-2, weight_decay=0.0, regularizer=reg)
        ft.fit(x, y, epochs=3, batch_size=16, verbose=0)
        changes[name] = relative_change(ft)[0]
    assert 0 < changes["l2sp"] < 0.8 * changes["plain"]


def test_interpolate_ends_are_exact_and_keep_the_head(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    ft = _tuner()
    pre = _backbone(ft)
    ft.fit(x, y, epochs=2, batch_size=16, verbose=0)
    tuned, head = _backbone(ft), _head(ft)
    assert any(not torch.equal(pre[k], tuned[k]) for k in pre)
    ft.interpolate(0.0)
    assert all(torch.equal(pre[k], v) for k, v in _backbone(ft).items())  # bitwise, BN statistics too
    assert all(torch.equal(head[k], v) for k, v in _head(ft).items())
    ft.interpolate(0.5)
    k = "stem.0.weight"
    assert torch.allclose(_backbone(ft)[k], (pre[k] + tuned[k]) / 2, atol=1e-7)
    ft.interpolate(1.0)
    assert all(torch.equal(tuned[k], v) for k, v in _backbone(ft).items())
    with pytest.raises(ConfigError, match="alpha=1.5"):
        ft.interpolate(1.5)


def test_sweep_interpolation_reports_each_alpha_and_leaves_model_as_documented(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    ft = _tuner()
    ft.fit(x, y, epochs=2, batch_size=16, verbose=0)
    tuned = _backbone(ft)
    sweep = ft.sweep_interpolation(x, y, alphas=(0.0, 0.5, 1.0))
    assert sweep.alphas == [0.0, 0.5, 1.0] and len(sweep.accuracy) == 3
    assert sweep.accuracy[2] == pytest.approx(ft.evaluate(x, y)["accuracy"])
    assert sweep.left_at == 1.0 and all(torch.equal(tuned[k], v) for k, v in _backbone(ft).items())
    best = ft.sweep_interpolation(x, y, alphas=(0.0, 0.5, 1.0), leave_at="best")
    assert best.left_at == best.best_alpha
    assert ft.evaluate(x, y)["accuracy"] == pytest.approx(max(best.accuracy))
    assert "best alpha" in str(best) and best.to_dict()["alphas"] == [0.0, 0.5, 1.0]


def test_retention_monitor_logs_floats_and_zero_drift_at_start(images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    ft = _tuner()
    mon = RetentionMonitor(x[:24])
    start = mon.measure(ft)
    assert start["retention_feature_sim"] == pytest.approx(1.0, abs=1e-9)
    assert start["retention_weight_change"] == 0.0 and set(mon.per_group.values()) == {0.0}
    hist = ft.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[mon])
    sims = hist.history["retention_feature_sim"]
    assert len(sims) == 2 and all(type(v) is float for v in sims)
    assert sims[-1] < 1.0 and hist.history["retention_weight_change"][-1] > 0
    assert set(mon.history_by_group) == {"stem", "stage1"} and len(mon.history_by_group["stem"]) == 2
    cos = RetentionMonitor(x[:24], similarity="cosine").measure(ft)
    assert 0 < cos["retention_feature_sim"] < 1.0
    ft.interpolate(0.0)
    assert mon.measure(ft)["retention_feature_sim"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ConfigError, match="'l2'"):
        RetentionMonitor(x, similarity="l2")


def test_loaded_tuner_snapshots_the_loaded_weights(tmp_path, images: tuple[np.ndarray, np.ndarray]) -> None:
    x, y = images
    ft = FineTuner("timm/resnet10t", num_classes=3, pretrained=False, image_size=32, seed=0)
    ft.fit(x[:32], y[:32], epochs=1, batch_size=16, verbose=0)  # resnet downsamples by 32
    ft.save(tmp_path / "run")
    loaded = FineTuner.load(tmp_path / "run")
    saved = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    loaded.interpolate(0.0)  # "pretrained" for a loaded model = the loaded weights
    assert all(torch.equal(saved[k], v) for k, v in loaded.model.state_dict().items())


def test_interpolate_with_bn_data_reestimates_statistics_but_alpha_one_stays_exact(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    ft = _tuner()
    ft.fit(x, y, epochs=1, batch_size=16, verbose=0)
    tuned = _backbone(ft)
    ft.interpolate(0.5)
    mixed_mean = ft.model.stem[1].running_mean.clone()
    wise.interpolate(ft, 0.5, bn_data=x, batch_size=40)  # equal batches: the cumulative mean is exact
    recal = ft.model.stem[1].running_mean.clone()
    assert not torch.allclose(recal, mixed_mean)
    # the re-estimated mean is the per-channel mean of the stem conv output over x, in eval preprocessing
    feats = []
    with torch.no_grad():
        ft.model.eval()
        conv = ft.model.stem[0]
        data = ft._prepare(x, None, augment=False, what="x", require_labels=False)
        for i in range(len(data.dataset)):
            feats.append(conv(data.dataset[i][0][None]))
    assert torch.allclose(recal, torch.cat(feats).mean(dim=(0, 2, 3)), atol=1e-4)
    ft.interpolate(1.0, bn_data=x)
    assert all(torch.equal(tuned[k], v) for k, v in _backbone(ft).items())
