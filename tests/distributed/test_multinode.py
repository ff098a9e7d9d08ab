"""Multi-node: ``torchrun --nnodes=2 --nproc_per_node=1`` as two localhost agents meeting at a c10d
rendezvous on 127.0.0.1 (a free port), against one process: the same weights through a GradualUnfreeze
run that changes the trainable set every epoch, with and without gradient checkpointing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import multinode_worker
import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available"),
]

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(multinode_worker.__file__).resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_nodes(scenario: str, out: Path, timeout: float = 300) -> None:
    """Start both nodes' torchrun agents at once; each runs one worker process."""
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", f"--rdzv-id=ftk-{port}",
           "--monitor-interval=0.5", str(WORKER), scenario, str(out)]  # fmt: skip
    nodes = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]  # fmt: skip
    try:
        outputs = [node.communicate(timeout=timeout)[0] for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    for node, text in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, text[-6000:]


@pytest.mark.parametrize("scenario", ["ddp", "ddp_checkpointing", "fsdp"])
def test_two_nodes_give_the_weights_of_one_process(tmp_path: Path, scenario: str):
    two_nodes(scenario, tmp_path)
    ranks = [load_file(str(tmp_path / f"{scenario}_rank{r}.safetensors")) for r in (0, 1)]
    assert [int(r["_world"]) for r in ranks] == [2, 2]
    assert sorted(int(r["_group_rank"]) for r in ranks) == [0, 1]  # two nodes, one process each
    compare(tmp_path, scenario, ranks)


def compare(out: Path, scenario: str, ranks: list[dict[str, torch.Tensor]]) -> None:
    """Rank 0's final weights (and the folder ft.save wrote) equal one process's within 1e-5; DDP ranks
    are bitwise equal; every parameter trained."""
    single = multinode_worker.reference(scenario).model.state_dict()
    init = multinode_worker.dist_worker.gn_tuner().model.state_dict()
    saved = load_file(str(out / f"{scenario}_model" / "model.safetensors"))
    assert saved.keys() == single.keys()
    for k, ref in single.items():
        assert torch.equal(saved[k], ranks[0][k]), f"the saved folder differs in {k}"
        if not scenario.startswith("fsdp"):  # FSDP's full state dict lives on rank 0 only
            assert torch.equal(ranks[0][k], ranks[1][k]), f"ranks differ in {k}"
        assert torch.allclose(ranks[0][k], ref, atol=1e-5, rtol=0), f"{k}: {(ranks[0][k] - ref).abs().max()}"
        assert k.startswith("pool") or (ref - init[k]).abs().max() > 1e-3, f"{k} did not train"
