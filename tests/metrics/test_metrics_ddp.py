"""Metrics reduced over 2 DDP processes (gloo, CPU) equal the single-process metrics on all samples:
sums and per-class counts are all-reduced, AUROC / mAP scores gathered, never a mean of means."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

NAMES = {
    "classification": ["accuracy", "f1_macro", "auroc", "ece", "top2"],
    "multi_label": ["f1_micro", "map"],
}


def _data(task: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if task == "classification":
        return torch.randn(37, 4, generator=g), torch.randint(0, 4, (37,), generator=g)
    return torch.randn(37, 4, generator=g), (torch.rand(37, 4, generator=g) < 0.4).float()


def _result(task: str, logits: torch.Tensor, y: torch.Tensor, reduce: bool) -> dict[str, float]:
    from finetunekit.metrics import MetricTracker, check_metrics

    tracker = MetricTracker(check_metrics(NAMES[task], task, 4), torch.device("cpu"))
    for start in range(0, len(y), 5):
        tracker.update(torch.tensor(float(start)), logits[start : start + 5], y[start : start + 5])
    if reduce:
        tracker.all_reduce()
    return tracker.result()


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from finetunekit import distributed

    distributed.init(torch.device("cpu"))
    part = slice(0, 20) if rank == 0 else slice(20, None)  # unequal shards
    results = {}
    for task in NAMES:
        logits, y = _data(task)
        results[task] = _result(task, logits[part], y[part], reduce=True)
    Path(f"{out}.{rank}").write_text(json.dumps(results))
    distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_metrics_reduced_over_ranks_equal_one_process(tmp_path):
    out = str(tmp_path / "result")
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, start_method="spawn")
    for task in NAMES:
        single = _result(task, *_data(task), reduce=False)
        for rank in (0, 1):
            reduced = json.loads(Path(f"{out}.{rank}").read_text())[task]
            assert set(reduced) == set(single)
            for name in NAMES[task]:
                assert reduced[name] == pytest.approx(single[name], abs=1e-9), (task, name)
