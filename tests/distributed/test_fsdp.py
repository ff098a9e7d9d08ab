"""FSDP2 (``distributed="fsdp"``): 2 gloo CPU processes against one process within 1e-5 through a
GradualUnfreeze run (requires_grad changes every epoch), each rank holding about half the parameters,
and ``ft.save`` writing one ordinary folder; plus the errors raised before training."""

from __future__ import annotations

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
from finetunekit.callbacks import BackupAndRestore
from finetunekit.errors import ConfigError
from finetunekit.training import fsdp

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["fsdp", "fsdp_checkpointing"])
def test_two_processes_shard_and_match_one_process(tmp_path: Path, scenario: str):
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--monitor-interval=0.5", str(WORKER), scenario, str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
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
    with pytest.raises(ConfigError, match="BackupAndRestore with distributed='fsdp'"):
        ft.fit(torch.zeros(4, 3, 16, 16), [0, 1, 2, 0], callbacks=[BackupAndRestore("/nonexistent/x")])
