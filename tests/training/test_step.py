"""compile()'s compute options each change what they say: autocast dtype, memory format, optimizer steps,
clipped gradients, torch.compile (or its fallback); bad values are ConfigErrors; no per-step syncs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyNet, make_images

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.errors import ConfigError
from finetunekit.metrics import MetricTracker
from finetunekit.training import loop


def _tuner(**compile_kwargs) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(
        TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu", seed=0
    )
    ft.compile(lr=1e-2, **compile_kwargs)
    return ft


def _fit(ft: FineTuner, n: int = 40, batch_size: int = 8, epochs: int = 1) -> None:
    x, y = make_images(n, 3, 16)
    ft.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, augment=False)


@pytest.mark.parametrize(("precision", "dtype"), [("32", torch.float32), ("bf16", torch.bfloat16),
                                                  ("16", torch.float16)])  # fmt: skip
def test_precision_sets_the_dtype_inside_forward(precision, dtype):
    ft = _tuner(precision=precision)
    seen = []
    ft.model.stem[0].register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    _fit(ft)
    seen = seen[
        1:
    ]  # the first forward is fit's preflight probe (finetunekit.training.preflight), outside training
    assert seen and set(seen) == {dtype}
    assert all(p.dtype == torch.float32 for p in ft.model.parameters())  # weights stay fp32


def test_fp16_grad_scaler_counts_skipped_steps():
    calls = {"n": 0}

    def loss(logits, y):
        calls["n"] += 1
        value = F.cross_entropy(logits.float(), y)
        return value * math.inf if calls["n"] == 1 else value  # first step: inf gradients

    ft = _tuner(precision="16", loss=loss)
    before = ft.model.fc.weight.detach().clone()
    steps = []
    ft.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    _fit(ft, n=8)  # a single batch: its step must be skipped
    assert ft.amp_skipped_steps == 1
    assert steps == []
    assert torch.equal(ft.model.fc.weight, before)


def test_channels_last_reaches_the_conv_input():
    for flag in (False, True):
        ft = _tuner(channels_last=flag)
        seen: list[bool] = []

        def hook(module, args, seen=seen):
            seen.append(args[0].is_contiguous(memory_format=torch.channels_last))

        ft.model.stem[0].register_forward_pre_hook(hook)
        _fit(ft, n=16)
        assert set(seen[1:]) == {flag}  # seen[0] is fit's preflight probe, outside training


@pytest.mark.parametrize(("accumulate", "expected"), [(1, 5), (2, 3), (3, 2), (5, 1)])
def test_accumulate_steps_sets_the_number_of_optimizer_steps(accumulate, expected):
    ft = _tuner(accumulate_steps=accumulate)
    steps = []
    ft.optimizer.register_step_post_hook(lambda *a: steps.append(1))
    _fit(ft, n=40, batch_size=8, epochs=2)  # 5 batches per epoch; a partial window steps at epoch end
    assert len(steps) == 2 * expected


def _grad_stats(ft: FineTuner) -> tuple[list[float], list[float]]:
    norms, peaks = [], []

    def hook(opt, args, kwargs):
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        peaks.append(max(float(g.abs().max()) for g in grads))

    ft.optimizer.register_step_pre_hook(hook)
    _fit(ft, n=24)
    return norms, peaks


def test_clip_grad_norm_and_value_bound_the_gradients():
    norms, peaks = _grad_stats(_tuner())
    assert max(norms) > 1e-3 and max(peaks) > 1e-4  # unclipped gradients exceed the bounds below
    norms, _ = _grad_stats(_tuner(clip_grad_norm=1e-3))
    assert max(norms) <= 1e-3 * (1 + 1e-4)
    _, peaks = _grad_stats(_tuner(clip_grad_value=1e-4))
    assert max(peaks) <= 1e-4 * (1 + 1e-6)


def test_compile_model_falls_back_to_eager_with_a_message(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    ft = _tuner(compile_model=True)
    before = ft.model.fc.weight.detach().clone()
    with pytest.warns(RuntimeWarning, match="no compiler here.*training eagerly"):
        _fit(ft, n=16)
    assert not torch.equal(ft.model.fc.weight, before)


def test_compile_model_runs_the_compiled_module(monkeypatch):
    calls = []

    def fake_compile(model, **kwargs):
        calls.append(kwargs)
        return lambda x: (calls.append("forward"), model(x))[1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    ft = _tuner(compile_model="eager")
    _fit(ft, n=16)
    assert calls[0] == {"backend": "eager"} and calls.count("forward") == 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"precision": "8"}, "precision='8'"),
        ({"precision": True}, "precision=True"),
        ({"channels_last": "yes"}, "channels_last='yes'"),
        ({"compile_model": 3}, "compile_model=3"),
        ({"accumulate_steps": 0}, "accumulate_steps=0"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm=-1.0"),
        ({"clip_grad_value": 0}, "clip_grad_value=0"),
        ({"ema_decay": 1.5}, "ema_decay=1.5"),
    ],
)
def test_bad_compute_options_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _tuner(**kwargs)


def test_metrics_are_synced_at_most_every_log_every_steps(monkeypatch):
    calls = []
    original = MetricTracker.result

    def counting(self):
        calls.append(1)
        return original(self)

    monkeypatch.setattr(MetricTracker, "result", counting)
    monkeypatch.setattr(loop, "LOG_INTERVAL", float("inf"))  # count step-based syncs only, not slow steps
    ft = _tuner()
    _fit(ft, n=25 * 4, batch_size=4)  # 25 steps
    assert len(calls) <= math.ceil(25 / loop.LOG_EVERY) + 1  # + the epoch's final result


def test_slow_steps_sync_batch_logs_by_time_so_the_bar_stays_live(monkeypatch):
    seen = []
    monkeypatch.setattr(loop, "LOG_INTERVAL", 0.0)  # every step counts as slow
    ft = _tuner()
    cb = LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(logs.get("loss")))
    x, y = make_images(12 * 4, 3, 16)
    ft.fit(x, y, batch_size=4, epochs=1, verbose=0, augment=False, callbacks=[cb])
    assert len(seen) == 12 and len(set(seen)) == 12  # fresh running loss at every step
