"""FSDP2 (``distributed="fsdp"``): 2 gloo CPU processes against one process within 1e-5 through a
GradualUnfreeze run (requires_grad changes every epoch), each rank holding about half the parameters,
and ``ft.save`` writing one ordinary folder; plus the errors raised before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import multinode_worker
import pytest
import torch
import torch.distributed as dist
from helpers import TinyNet
from safetensors.torch import load_file
from test_multinode import ROOT, WORKER, compare

from finetunekit import L2SP, FineTuner
from finetunekit.errors import ConfigError
from finetunekit.training import fsdp

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


def two_processes(scenario: str, out: Path, *extra: str) -> str:
    """``torchrun --standalone --nproc_per_node=2`` of multinode_worker's ``scenario``; its output."""
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=0.5", *extra, str(WORKER), scenario, str(out)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["fsdp", "fsdp_checkpointing"])
def test_two_processes_shard_and_match_one_process(tmp_path: Path, scenario: str):
    two_processes(scenario, tmp_path)
    ranks = [load_file(str(tmp_path / f"{scenario}_rank{r}.safetensors")) for r in (0, 1)]
    total = sum(p.numel() for p in multinode_worker.dist_worker.GNNet().parameters())
    for r in ranks:
        assert int(r["_world"]) == 2
        assert 0.4 * total < int(r["_local_numel"]) < 0.6 * total  # sharded: about half on each rank
    compare(tmp_path, scenario, ranks)
    loaded = FineTuner.load(tmp_path / f"{scenario}_model", model=multinode_worker.dist_worker.GNNet())
    assert not fsdp.is_sharded(loaded.model)


def test_fsdp_mode_is_checked_before_training(monkeypatch: pytest.MonkeyPatch):
    with pytest.raises(ConfigError, match="distributed='fsdp' needs several processes"):
        FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, distributed="fsdp")
    with pytest.raises(ConfigError, match="distributed='shard' is invalid"):
        FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, distributed="shard")
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    ft = FineTuner(TinyNet(num_classes=3), 3, device="cpu", image_size=16, distributed="fsdp")
    with pytest.raises(ConfigError, match="EMA and L2-SP keep unsharded copies"):
        ft.compile(regularizer=L2SP())


@pytest.mark.slow
def test_a_sharded_run_killed_mid_epoch_resumes_bitwise_from_its_backup(tmp_path: Path):
    """Rank 1 dies in epoch 1; torchrun restarts both ranks, which restore the newest backup (epoch 0,
    step 4, written by rank 0 from the gathered shards) and finish: the weights equal an uninterrupted
    sharded run's bitwise, the per-epoch ModelCheckpoint folders open with FineTuner.load, and the last
    one holds the final weights."""
    output = two_processes("fsdp_backup", tmp_path / "resumed", "--max-restarts=1")
    assert "simulated crash of rank 1 with a backup on disk" in output
    for r in (0, 1):
        assert json.loads((tmp_path / "resumed" / f"first_batch_attempt0_rank{r}.json").read_text()) == [0, 0]
        assert json.loads((tmp_path / "resumed" / f"first_batch_attempt1_rank{r}.json").read_text()) == [0, 4]
    two_processes("fsdp", tmp_path / "straight")
    resumed = load_file(str(tmp_path / "resumed" / "fsdp_backup_model" / "model.safetensors"))
    straight = load_file(str(tmp_path / "straight" / "fsdp_model" / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    for k, v in straight.items():
        assert torch.equal(resumed[k], v), f"{k}: {(resumed[k] - v).abs().max()}"
    last = load_file(str(tmp_path / "resumed" / "mc" / "e3" / "model.safetensors"))
    assert all(torch.equal(last[k], v) for k, v in straight.items())
    for epoch in (1, 2, 3):  # epoch 1 by the first attempt, 2 and 3 by the resumed one
        folder = tmp_path / "resumed" / "mc" / f"e{epoch}"
        loaded = FineTuner.load(folder, model=multinode_worker.dist_worker.GNNet())
        assert not fsdp.is_sharded(loaded.model)
