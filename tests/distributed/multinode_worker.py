"""Scenarios for tests/distributed/test_multinode.py: each rank trains dist_worker's GradualUnfreeze run
(a new trainable set every epoch) and writes its final weights; the test compares them with one process.

Usage (one line per node): python -m torch.distributed.run --nnodes=2 --nproc_per_node=1
    --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:PORT multinode_worker.py SCENARIO OUT_DIR
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # dist_worker
sys.path.insert(0, str(HERE.parent))  # helpers

import dist_worker  # noqa: E402

from finetunekit import distributed  # noqa: E402


def train(**compile_kw: Any) -> Any:
    """dist_worker's unfreeze run (3 epochs, global batch 8, GroupNorm), compiled with ``compile_kw``."""
    x, y, _, _ = dist_worker.data()
    ft = dist_worker.gn_tuner()
    ft.compile(lr=1e-2, **compile_kw)
    ft.fit(x, y, batch_size=dist_worker.BATCH, epochs=3, augment=False, verbose=0)
    return ft


SCENARIOS = {
    "ddp": {},
    "ddp_checkpointing": {"grad_checkpointing": True},
}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    ft = train(**SCENARIOS[scenario])
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone().contiguous() for k, v in ft.model.state_dict().items()}
    state["_world"] = torch.tensor(distributed.world_size())
    state["_group_rank"] = torch.tensor(int(os.environ["GROUP_RANK"]))  # the node's rank
    save_file(state, str(out / f"{scenario}_rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
