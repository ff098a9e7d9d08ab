"""Scenarios for tests/distributed/test_multinode.py: each rank trains dist_worker's GradualUnfreeze run
(a new trainable set every epoch) and writes its final weights; the test compares them with one process.

Usage (one line per node): python -m torch.distributed.run --nnodes=2 --nproc_per_node=1
    --rdzv-backend=c10d --rdzv-endpoint=127.0.0.1:PORT multinode_worker.py SCENARIO OUT_DIR
"""

from __future__ import annotations

import json
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
from finetunekit.strategies import GradualUnfreeze  # noqa: E402
from finetunekit.training import fsdp  # noqa: E402


def train(distributed: Any = None, callbacks: Any = None, **compile_kw: Any) -> Any:
    """dist_worker's unfreeze run (3 epochs, global batch 8, GroupNorm), compiled with ``compile_kw``."""
    x, y, _, _ = dist_worker.data()
    torch.manual_seed(0)
    net = dist_worker.GNNet()
    ft = dist_worker.tuner(net, strategy=GradualUnfreeze(every=1), distributed=distributed)
    ft.compile(lr=1e-2, **compile_kw)
    ft.fit(x, y, batch_size=dist_worker.BATCH, epochs=3, augment=False, verbose=0, callbacks=callbacks)
    return ft


def checkpointed_callbacks(out: Path) -> list[Any]:
    """fsdp_backup: mid-epoch backups every 4 batches, a full training checkpoint per epoch, and rank 1
    dying at batch 1 of epoch 1 in torchrun's first attempt (the newest backup is then epoch 0, step 4:
    only the head had trained, so stage1's and the stem's optimizer state do not exist yet)."""
    from finetunekit.callbacks import BackupAndRestore, Callback, ModelCheckpoint

    attempt, rank = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"), os.environ["RANK"]
    first = out / f"first_batch_attempt{attempt}_rank{rank}.json"

    class FirstBatch(Callback):
        """Writes (epoch, batch) of the first batch this attempt trains: where it started."""

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            if not first.exists():
                first.write_text(json.dumps([self.require_run().epoch, batch]))

    seen = FirstBatch()
    return [seen, dist_worker.CrashRankOne(epoch=1), BackupAndRestore(out / "bk", save_freq=4),
            ModelCheckpoint(str(out / "mc" / "e{epoch}"))]  # fmt: skip


SCENARIOS: dict[str, dict[str, Any]] = {
    "ddp": {},
    "ddp_checkpointing": {"grad_checkpointing": True},
    "fsdp": {"distributed": "fsdp"},
    "fsdp_checkpointing": {"distributed": "fsdp", "grad_checkpointing": True},
    "fsdp_backup": {"distributed": "fsdp"},  # with checkpointed_callbacks, crashed and resumed
}


def reference(scenario: str) -> Any:
    """The same run in one process (FSDP and DDP both reduce to plain training there)."""
    kw = {k: v for k, v in SCENARIOS[scenario].items() if k != "distributed"}
    return train(**kw)


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    callbacks = checkpointed_callbacks(out) if scenario == "fsdp_backup" else None
    ft = train(callbacks=callbacks, **SCENARIOS[scenario])
    rank = int(os.environ["RANK"])
    state = {k: v.detach().clone().contiguous() for k, v in fsdp.full_state_dict(ft.model).items()}
    local = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in ft.model.parameters())
    state["_local_numel"] = torch.tensor(local)  # under FSDP about 1/world of the parameters
    ft.save(out / f"{scenario}_model")  # every rank calls it; rank 0 writes one ordinary folder
    state["_world"] = torch.tensor(distributed.world_size())
    state["_group_rank"] = torch.tensor(int(os.environ["GROUP_RANK"]))  # the node's rank
    save_file(state, str(out / f"{scenario}_rank{rank}.safetensors"))


if __name__ == "__main__":
    main()
