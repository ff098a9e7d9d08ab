"""DDP under torchrun (2 gloo processes on the CPU) against one process with the same global batch.

One torchrun job runs tests/distributed/dist_worker.py's ``main`` scenario (fixture ``main_run``); the
tests compare its files with the same scenario run here, in this process, without torchrun. Two more
jobs check failure handling and a torchrun restart that resumes from rank 0's checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import dist_worker
import numpy as np
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(dist_worker.__file__).resolve()


def torchrun(scenario: str, out: Path, *extra: str, timeout: float = 240) -> tuple[Any, float]:
    """Run the worker under ``python -m torch.distributed.run`` with 2 processes; (result, seconds)."""
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=0.5", *extra, str(WORKER), scenario, str(out)]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    return proc, time.monotonic() - start


@pytest.fixture(scope="module")
def main_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp_main")
    proc, _ = torchrun("main", out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return out


@pytest.fixture(scope="module")
def single() -> dict[str, Any]:
    """The same scenario in this process: no torchrun, so no DDP."""
    return dist_worker.train_unfreeze()


def report(out: Path, rank: int) -> dict[str, Any]:
    return json.loads((out / f"main_rank{rank}.json").read_text())


def test_ddp_matches_one_process_through_an_unfreeze_and_ranks_are_bitwise_equal(main_run, single):
    r0 = load_file(str(main_run / "unfreeze_rank0.safetensors"))
    r1 = load_file(str(main_run / "unfreeze_rank1.safetensors"))
    ref = single["ft"].model.state_dict()
    init = dist_worker.gn_tuner().model.state_dict()
    assert r0.keys() == r1.keys() == ref.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks differ in {k}"
        assert torch.allclose(r0[k], ref[k], atol=1e-5, rtol=0), f"{k}: {(r0[k] - ref[k]).abs().max()}"
    # Every group trained (GradualUnfreeze opened stem in epoch 2) by far more than the tolerance.
    for prefix in ("stem.", "stage1.", "fc."):
        moved = max((ref[k] - init[k]).abs().max().item() for k in ref if k.startswith(prefix))
        assert moved > 1e-3, prefix


def test_ddp_with_fits_default_augmentation_matches_one_process(main_run):
    # Each sample's crop and flip come from (seed, epoch, index): the rank that loads it does not matter.
    r0 = load_file(str(main_run / "augmented_rank0.safetensors"))
    r1 = load_file(str(main_run / "augmented_rank1.safetensors"))
    one = dist_worker._state(dist_worker.train_augmented())
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    diff = max(float((r0[k] - one[k]).abs().max()) for k in one)
    assert diff < 1e-5, diff


def test_ddp_is_rebuilt_once_per_trainable_set_and_old_wrappers_are_freed(main_run):
    for rank in (0, 1):
        rep = report(main_run, rank)
        assert rep["world"] == 2 and rep["rank"] == rank
        assert rep["ddp_builds"] == 3  # head; stage1 + head; all
        assert rep["old_wrapper_collected"]
        assert rep["owns_group"]
    assert report(main_run, 0)["shared_seed"] == report(main_run, 1)["shared_seed"] is not None


def test_history_and_evaluate_equal_one_process_without_padding_duplicates(main_run, single):
    r0, r1 = report(main_run, 0), report(main_run, 1)
    assert r0["history"] == r1["history"] and r0["evaluate"] == r1["evaluate"]
    for key, values in single["history"].items():
        assert np.allclose(r0["history"][key], values, rtol=0, atol=1e-6), key
    # 21 validation samples over 2 ranks (11 + 10): counts are exact, so accuracy is bitwise equal.
    assert r0["history"]["val_accuracy"] == single["history"]["val_accuracy"]
    assert r0["evaluate"]["accuracy"] == single["evaluate"]["accuracy"]
    assert 0.3 < single["evaluate"]["accuracy"] < 0.7  # 7 of 21 labels are wrong on purpose
    assert r0["evaluate"]["loss"] == pytest.approx(single["evaluate"]["loss"], abs=1e-6)


def test_predict_gathers_every_sample_in_input_order_on_every_rank(main_run, single):
    p0, p1 = np.load(main_run / "predict_rank0.npy"), np.load(main_run / "predict_rank1.npy")
    assert p0.shape == (dist_worker.N_VAL, 3)
    assert np.array_equal(p0, p1)
    np.testing.assert_allclose(p0, single["predict"], rtol=0, atol=1e-6)


def test_only_rank_zero_prints_progress_and_writes_the_saved_model(main_run):
    r0, r1 = report(main_run, 0), report(main_run, 1)
    assert "Epoch 3/3" in r0["output"] and "Epoch" not in r1["output"]
    assert r0["save_calls"] == [str(main_run / "model")] and r1["save_calls"] == []
    assert r0["loaded_equals_saved"] and r1["loaded_equals_saved"]


def test_batchnorm_model_keeps_ranks_bitwise_identical_buffers_included(main_run):
    b0 = load_file(str(main_run / "bn_rank0.safetensors"))
    b1 = load_file(str(main_run / "bn_rank1.safetensors"))
    assert any("running_mean" in k for k in b0)
    for k in b0:
        assert torch.equal(b0[k], b1[k]), k


def test_one_rank_raising_ends_the_job_promptly_naming_the_cause(tmp_path):
    proc, seconds = torchrun("fail", tmp_path)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    raised = float((tmp_path / "raised_at").read_text())
    assert time.time() - raised < 60, "the job outlived the failing rank by a minute"
    assert seconds < 120
    assert "rank one exploded at step 2" in output
    assert "finetunekit: rank 1 of 2 failed with ValueError" in output
    root_cause = output[output.index("Root Cause") :]
    assert "rank      : 1" in root_cause and "rank one exploded at step 2" in root_cause


def test_torchrun_restart_resumes_every_rank_from_rank_zero_checkpoint(tmp_path):
    proc, _ = torchrun("resume", tmp_path, "--max-restarts=1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "simulated crash of rank 1 in epoch 1" in output  # attempt 0 failed ...
    saved = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    starts = [load_file(str(tmp_path / f"resume_start_rank{r}.safetensors")) for r in (0, 1)]
    ends = [load_file(str(tmp_path / f"resume_end_rank{r}.safetensors")) for r in (0, 1)]
    for r in (0, 1):  # ... and attempt 1 resumed on both ranks from the epoch-0 checkpoint
        rep = json.loads((tmp_path / f"resume_rank{r}.json").read_text())
        assert rep == {"attempt": 1, "from_epoch": 0}
        assert all(torch.equal(starts[r][k], saved[k]) for k in saved)
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in saved)
    assert any(not torch.equal(ends[0][k], saved[k]) for k in saved)  # and trained on


@pytest.mark.slow
def test_each_rank_resumes_with_its_own_rng_state(tmp_path):
    """Ranks seeded apart draw different dropout masks; a resume gives each rank back its own RNG
    states (gathered to rank 0's backup), so the resumed run equals the one that never stopped. With
    rank 0's states on every rank, as before, rank 1's masks after the resume differ and so do the
    weights."""
    (tmp_path / "resumed").mkdir()
    (tmp_path / "straight").mkdir()
    proc, _ = torchrun("rank_rng_resumed", tmp_path / "resumed", "--max-restarts=1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "simulated crash of rank 1 with a backup on disk" in output
    proc, _ = torchrun("rank_rng_straight", tmp_path / "straight")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    for r in (0, 1):
        resumed = load_file(str(tmp_path / "resumed" / f"rank_rng_resumed_rank{r}.safetensors"))
        straight = load_file(str(tmp_path / "straight" / f"rank_rng_straight_rank{r}.safetensors"))
        for k, v in straight.items():
            assert torch.equal(resumed[k], v), f"rank {r}, {k}: {(resumed[k] - v).abs().max()}"


@pytest.mark.slow
def test_backup_and_restore_resumes_every_rank_across_a_torchrun_restart(tmp_path):
    proc, _ = torchrun("backup", tmp_path, "--max-restarts=1")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "simulated crash of rank 1 with a backup on disk" in output  # attempt 0 died in epoch 1 ...
    for r in (0, 1):  # ... and attempt 1 restored from the epoch-0 backup on both ranks, not from scratch
        rep = json.loads((tmp_path / f"backup_rank{r}.json").read_text())
        assert rep == {"attempt": 1, "begun": [1, 2], "epochs": [0, 1, 2]}, rep
    ends = [load_file(str(tmp_path / f"backup_end_rank{r}.safetensors")) for r in (0, 1)]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])  # ranks bitwise identical
