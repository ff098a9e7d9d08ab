"""Kill -9 a training process at chosen points, start it again, and get bitwise the uninterrupted result.

Each scenario runs ``tests/resume_script.py`` in subprocesses: one or more runs that SIGKILL themselves
(after a batch, in the middle of a checkpoint file write, during validation), then a run that finishes
from the backup and also trains an uninterrupted reference with the same seed in the same process.
3 epochs x 6 batches, BackupAndRestore(save_freq=4), so backups fall mid-epoch and across epoch ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "training" / "resume_script.py"


def _run(tmp: Path, strategy: str, *extra: str, killed: bool, backbone: str = "tiny") -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), strategy, str(tmp / "backup"), str(tmp / "final"),
           "--backbone", backbone, *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if killed:
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    else:
        assert proc.returncode == 0, proc.stderr[-3000:]


def _assert_same_as_reference(tmp: Path) -> None:  # the measured (EMA) weights and the raw ones
    final, ref = load_file(tmp / "final.safetensors"), load_file(tmp / "final.ref.safetensors")
    assert final.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(final[k], ref[k])]
    assert not different, f"not bitwise equal after resume: {different}"
    history = json.loads((tmp / "final.json").read_text())
    ref_history = json.loads((tmp / "final.ref.json").read_text())
    assert history == ref_history  # every epoch's logs, the ones before the crash included


def _scenario(tmp: Path, strategy: str, kills: list[str], backbone: str = "tiny", *extra: str) -> None:
    for kill in kills:
        _run(tmp, strategy, "--kill", kill, *extra, killed=True, backbone=backbone)
    _run(tmp, strategy, "--reference", *extra, killed=False, backbone=backbone)
    _assert_same_as_reference(tmp)
    assert not any(p.name.startswith("ckpt-") for p in (tmp / "backup").iterdir())  # deleted at the end


def test_gradual_unfreeze_killed_at_boundary_and_in_a_checkpoint_write(tmp_path: Path) -> None:
    # step 6 is the first batch of epoch 1, where the second group unfreezes; write 8 is the training
    # state file of the second backup after the restart (half written when the process dies).
    _scenario(tmp_path, "gradual", ["step:6", "write:8"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "kills"),
    [
        ("full", ["step:2", "val:1"]),  # the first kill comes before any backup exists
        ("gradual", ["val:2", "step:16"]),
        ("frozen", ["write:3", "step:13"]),
        ("discriminative", ["val:0", "write:5"]),
        ("lpft", ["step:5", "step:11"]),
    ],
)
def test_kill_matrix(tmp_path: Path, strategy: str, kills: list[str]) -> None:
    _scenario(tmp_path, strategy, kills)


@pytest.mark.slow
def test_real_timm_backbone_killed_mid_epoch(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    _scenario(tmp_path, "discriminative", ["step:8"], backbone="timm/resnet10t")


# Every compile() option that keeps state, alone and together. 6 batches per epoch, backups every 4
# batches (mid-epoch, and mid accumulation window for accumulate_steps=3: window [3, 6) at batch 4).
ALL_OPTIONS = {"ema_decay": 0.9, "ema_warmup": True, "mixup": 0.4, "cutmix": 1.0, "accumulate_steps": 3,
               "clip_grad_norm": 0.5, "clip_grad_value": 0.2, "l2sp": True,
               "label_smoothing": 0.1}  # fmt: skip


def test_every_compile_option_together_killed_mid_window_and_at_an_epoch_boundary(tmp_path: Path) -> None:
    # step 5: the backup at batch 4 is in the middle of an accumulation window; step 12 is the first
    # batch of epoch 2, resumed from the backup after batch 11 (an epoch's last batch).
    _scenario(tmp_path, "gradual", ["step:5", "step:12"], "tiny", "--compile", json.dumps(ALL_OPTIONS))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("options", "kills"),
    [
        ({"ema_decay": 0.9}, ["step:5", "val:1"]),
        ({"ema_decay": 0.9, "ema_warmup": True}, ["step:9"]),
        ({"mixup": 0.4, "cutmix": 1.0}, ["step:10", "write:6"]),
        ({"mixup": 0.4}, ["step:6"]),
        ({"accumulate_steps": 4}, ["step:5", "step:14"]),  # windows [0,4), [4,6): backups at 4 and 8, 12
        ({"accumulate_steps": 3, "ema_decay": 0.8}, ["step:9"]),
        ({"clip_grad_norm": 0.5}, ["step:7"]),
        ({"clip_grad_value": 0.05}, ["step:7"]),
        ({"l2sp": True}, ["step:9"]),
        ({"label_smoothing": 0.2, "mixup": 0.2}, ["step:10"]),
        ({"precision": "bf16"}, ["step:5"]),
        ({"channels_last": True}, ["step:5"]),
    ],
    ids=lambda v: "-".join(f"{k}={w}" for k, w in v.items()) if isinstance(v, dict) else ",".join(v),
)
def test_compile_option_matrix(tmp_path: Path, options: dict, kills: list[str]) -> None:
    _scenario(tmp_path, "full", kills, "tiny", "--compile", json.dumps(options))


@pytest.mark.slow
def test_every_option_with_epoch_end_backups(tmp_path: Path) -> None:
    _scenario(tmp_path, "lpft", ["step:7", "step:13"], "tiny", "--compile", json.dumps(ALL_OPTIONS),
              "--save-freq", "6")  # fmt: skip


@pytest.mark.slow
def test_augmented_fit_with_workers_resumes_bitwise_and_equals_in_process_loading(tmp_path: Path) -> None:
    # fit's default augmentation, 2 DataLoader workers in the killed and the resumed run; the reference
    # loads in-process. Killed mid-epoch (step 9: backup at 8) and in the middle of a backup write.
    _scenario(tmp_path, "full", ["step:9", "write:4"], "tiny", "--workers", "2")
