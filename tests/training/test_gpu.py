"""The CUDA-only paths, in the ``gpu`` tier (``pytest -m gpu`` on a machine with a GPU; skipped without
one): the fused optimizer's device-side found_inf skip, the fp16 GradScaler (skips, and its state across a
resume), channels_last, and DDP over NCCL."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from helpers import TinyNet, make_images, on_global_step

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
X, Y = make_images(48, 3, 16, seed=2)
ROOT = Path(__file__).resolve().parents[2]


def _tuner(**compile_kw: Any) -> FineTuner:
    torch.manual_seed(0)
    ft = FineTuner(TinyNet(num_classes=3), num_classes=3, image_size=16, device="cuda", seed=0)
    return ft.compile(lr=1e-2, **compile_kw)


def _weights(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in ft.model.state_dict().items()}


def _bad_at(*calls: int) -> Any:
    seen = {"n": -1}

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen["n"] += 1
        value = F.cross_entropy(logits.float(), y)
        return value * math.nan if seen["n"] in calls else value

    return loss


def test_fused_adamw_skips_a_nan_step_on_the_device() -> None:
    fused = lambda params, lr: torch.optim.AdamW(params, lr=lr, fused=True)  # noqa: E731
    ft = _tuner(optimizer=fused, loss=_bad_at(2), on_nonfinite="skip")
    states: dict[int, dict[str, torch.Tensor]] = {}
    ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, augment=False,
           callbacks=[on_global_step(lambda s: states.__setitem__(s, _weights(ft)))])  # fmt: skip
    assert all(torch.equal(states[2][k], states[1][k]) for k in states[1])  # the NaN step left no trace
    assert not all(torch.equal(states[3][k], states[2][k]) for k in states[2])  # and training went on


def test_fp16_grad_scaler_skips_inf_steps_and_counts_them() -> None:
    calls = {"n": 0}

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        value = F.cross_entropy(logits.float(), y)
        return value * math.inf if calls["n"] == 1 else value

    ft = _tuner(precision="16", loss=loss)
    ft.fit(X[:16], Y[:16], batch_size=8, epochs=1, verbose=0, augment=False)
    assert ft.amp_skipped_steps == 1


def _fp16_fit(backup: Path, crash: int | None) -> dict[str, torch.Tensor] | None:
    ft = _tuner(precision="16")
    callbacks: list[Any] = [BackupAndRestore(backup, save_freq=2)]
    if crash is not None:

        def die(step: int) -> None:
            if step == crash:
                raise KeyboardInterrupt

        callbacks.append(on_global_step(die))
    try:
        ft.fit(X, Y, batch_size=8, epochs=2, verbose=0, callbacks=callbacks, deterministic=True)
    except KeyboardInterrupt:
        return None
    return _weights(ft)


def test_fp16_resume_restores_the_grad_scaler(tmp_path: Path) -> None:
    reference = _fp16_fit(tmp_path / "ref", None)
    assert _fp16_fit(tmp_path / "bk", crash=7) is None
    resumed = _fp16_fit(tmp_path / "bk", None)
    assert reference is not None and resumed is not None
    diff = max(float((reference[k].float() - resumed[k].float()).abs().max()) for k in reference)
    assert diff < 1e-5, diff  # GPU kernels: deterministic mode, up to their own determinism


def test_channels_last_trains_and_predicts_like_the_default_layout() -> None:
    plain, last = _tuner(), _tuner(channels_last=True)
    assert last.model.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
    for ft in (plain, last):
        ft.fit(X, Y, batch_size=8, epochs=1, verbose=0, augment=False)
    diff = abs(plain.predict(X) - last.predict(X)).max()
    assert diff < 1e-3, diff


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs two GPUs")
def test_ddp_over_nccl_keeps_ranks_bitwise_equal(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ROOT / "tests" / "distributed" / "dist_worker.py"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           "nccl", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = load_file(tmp_path / "nccl_rank0.safetensors"), load_file(tmp_path / "nccl_rank1.safetensors")
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
