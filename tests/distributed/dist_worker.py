"""Scenarios run by tests/distributed under ``torchrun --nproc_per_node=2`` (gloo, CPU), and in-process
(one process, no torchrun) as the reference they are compared with.

Usage: python -m torch.distributed.run --standalone --nproc_per_node=2 dist_worker.py SCENARIO OUT_DIR
Every rank writes its results under OUT_DIR with its rank in the file name.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # tests/: helpers

from helpers import TinyNet, make_images  # noqa: E402

from finetunekit import FineTuner, distributed  # noqa: E402
from finetunekit.callbacks import BackupAndRestore, Callback, LambdaCallback  # noqa: E402
from finetunekit.saving import model_folder as saving  # noqa: E402
from finetunekit.strategies import GradualUnfreeze  # noqa: E402

N_TRAIN, N_VAL, BATCH = 48, 21, 8  # 21 validation samples: not divisible by 2 ranks


class GNNet(nn.Module):
    """TinyNet's three groups (stem, stage1, head) with GroupNorm: normalisation per sample, so DDP
    with a split batch computes exactly what one process computes on the whole batch."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU())
        self.stage1 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(2, 16), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.stage1(self.stem(x))))


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = make_images(N_TRAIN, 3, 16, seed=0)
    xv, yv = make_images(N_VAL, 3, 16, seed=1)
    yv[::3] = (yv[::3] + 1) % 3  # 7 of 21 labels wrong: accuracy counts are informative
    return x, y, xv, yv


def tuner(net: nn.Module, **kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(net, num_classes=3, image_size=16, device="cpu", seed=0, **kw)


def gn_tuner() -> FineTuner:
    torch.manual_seed(0)
    return tuner(GNNet(), strategy=GradualUnfreeze(every=1))


def train_unfreeze() -> dict[str, Any]:
    """GradualUnfreeze over 3 epochs (head; stage1 + head; all): a new trainable set every epoch."""
    x, y, xv, yv = data()
    ft = gn_tuner()
    ft.compile(lr=1e-2)
    hist = ft.fit(x, y, batch_size=BATCH, epochs=3, validation_data=(xv, yv), augment=False, verbose=2)
    return {
        "ft": ft,
        "history": hist.history,
        "evaluate": ft.evaluate(xv, yv, batch_size=4),
        "predict": ft.predict(xv, batch_size=4),
    }


def train_augmented() -> FineTuner:
    """fit's default augmentation (random resized crops and flips) for 2 epochs, GroupNorm model."""
    x, y, _, _ = data()
    ft = gn_tuner()
    ft.compile(lr=1e-2)
    ft.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    return ft


def _state(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in ft.model.state_dict().items()}


def env_rank() -> int:
    """The rank before fit has initialized the process group (then distributed.rank() says 0)."""
    return int(os.environ.get("RANK", "0"))


def scenario_main(out: Path) -> None:
    rank = env_rank()
    captured = io.StringIO()
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
        res = train_unfreeze()
    ft = res["ft"]
    run = ft._distributed_run
    save_file(_state(ft), str(out / f"unfreeze_rank{rank}.safetensors"))
    save_file(_state(train_augmented()), str(out / f"augmented_rank{rank}.safetensors"))
    np.save(out / f"predict_rank{rank}.npy", res["predict"])

    # BatchNorm TinyNet under GradualUnfreeze: ranks stay bitwise identical, buffers included.
    x, y, _, _ = data()
    torch.manual_seed(0)
    bn = tuner(TinyNet(num_classes=3), strategy=GradualUnfreeze(every=1))
    bn.compile(lr=1e-2)
    bn.fit(x, y, batch_size=BATCH, epochs=2, augment=True, verbose=0)
    save_file(_state(bn), str(out / f"bn_rank{rank}.safetensors"))

    # Saving: every rank calls ft.save, rank 0 writes; then every rank loads what rank 0 wrote.
    calls: list[str] = []
    real = saving.save_model_folder
    saving.save_model_folder = lambda *a, **k: (calls.append(str(a[0])), real(*a, **k))[1]  # type: ignore[assignment]
    try:
        ft.save(out / "model")
    finally:
        saving.save_model_folder = real  # type: ignore[assignment]
    loaded = FineTuner.load(out / "model", model=GNNet(), device="cpu")
    same = all(torch.equal(a, b) for a, b in zip(_state(loaded).values(), _state(ft).values(), strict=True))
    report = {
        "rank": rank,
        "world": distributed.world_size(),
        "history": res["history"],
        "evaluate": res["evaluate"],
        "ddp_builds": run.builds,
        # fit releases its DDP wrapper (and every one before it): no stale reducer hooks or buckets
        "old_wrapper_collected": run.ddp is None and all(ref() is None for ref in run.built),
        "output": captured.getvalue(),
        "save_calls": calls,
        "loaded_equals_saved": same,
        "owns_group": distributed.owns_process_group(),
        "shared_seed": run.shared_seed(None),  # validation_split without a seed: one split for all ranks
    }
    (out / f"main_rank{rank}.json").write_text(json.dumps(report))


def scenario_fail(out: Path) -> None:
    """Rank 1 raises at step 2 of epoch 0, while rank 0 waits in that step's all-reduce."""
    x, y, _, _ = data()
    ft = gn_tuner()

    def boom(batch: int, logs: Any = None) -> None:
        if distributed.rank() == 1 and batch == 2:
            (out / "raised_at").write_text(str(time.time()))
            raise ValueError("rank one exploded at step 2")

    ft.fit(x, y, batch_size=4, epochs=50, augment=False, verbose=0,
           callbacks=[LambdaCallback(on_train_batch_begin=boom)])  # fmt: skip


class SaveEachEpoch(Callback):
    """A file-writing callback as docs/distributed.md prescribes: called on every rank, rank 0 writes."""

    def __init__(self, folder: Path, fail_epoch: int | None):
        super().__init__()
        self.folder, self.fail_epoch = folder, fail_epoch

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.tuner.save(self.folder / "ckpt")  # rank 0 writes, every rank returns after the write
        distributed.run_on_main(lambda: (self.folder / "ckpt_epoch.json").write_text(json.dumps(epoch)))

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        failing = self.fail_epoch is not None and self._epoch == self.fail_epoch and batch == 1
        if failing and distributed.rank() == 1:
            raise RuntimeError("simulated crash of rank 1 in epoch 1")

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch


def scenario_resume(out: Path) -> None:
    """Attempt 0 saves after epoch 0 and crashes in epoch 1; torchrun (--max-restarts=1) starts every
    worker again, and attempt 1 resumes from rank 0's checkpoint on every rank."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    x, y, _, _ = data()
    rank = env_rank()
    if attempt == 0:
        ft = gn_tuner()
        ft.compile(lr=1e-2)
        ft.fit(x, y, batch_size=BATCH, epochs=3, augment=False, verbose=0,
               callbacks=[SaveEachEpoch(out, fail_epoch=1)])  # fmt: skip
        return
    epoch = json.loads((out / "ckpt_epoch.json").read_text())
    ft = FineTuner.load(out / "ckpt", model=GNNet(), device="cpu")
    ft.strategy = GradualUnfreeze(every=1)
    start = _state(ft)
    ft.compile(lr=1e-2)
    ft.fit(x, y, batch_size=BATCH, epochs=3, initial_epoch=epoch + 1, augment=False, verbose=0)
    save_file(start, str(out / f"resume_start_rank{rank}.safetensors"))
    save_file(_state(ft), str(out / f"resume_end_rank{rank}.safetensors"))
    (out / f"resume_rank{rank}.json").write_text(json.dumps({"attempt": attempt, "from_epoch": epoch}))


class CrashRankOne(Callback):
    """Rank 1 dies at batch 1 of ``epoch`` in the first attempt only (torchrun's restart count)."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch, self._now = epoch, -1

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._now = epoch

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
        if first_attempt and self._now == self.epoch and batch == 1 and distributed.rank() == 1:
            raise RuntimeError("simulated crash of rank 1 with a backup on disk")


def scenario_backup(out: Path) -> None:
    """The same script in every attempt, with BackupAndRestore: attempt 0 backs up after epoch 0 and
    crashes in epoch 1; attempt 1 restores on every rank from rank 0's backup and finishes."""
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    x, y, _, _ = data()
    ft = gn_tuner()
    ft.compile(lr=1e-2)
    begun: list[int] = []  # epochs this attempt trained (History also holds the restored ones)
    seen = LambdaCallback(on_epoch_begin=lambda epoch, logs: begun.append(epoch))
    history = ft.fit(x, y, batch_size=BATCH, epochs=3, augment=False, verbose=0,
                     callbacks=[seen, CrashRankOne(epoch=1), BackupAndRestore(out / "bk")])  # fmt: skip
    rank = env_rank()
    save_file(_state(ft), str(out / f"backup_end_rank{rank}.safetensors"))
    (out / f"backup_rank{rank}.json").write_text(
        json.dumps({"attempt": attempt, "begun": begun, "epochs": history.epoch})
    )


class DropNet(GNNet):
    """GNNet with dropout before the head: what a rank draws from its RNG changes the gradients."""

    def __init__(self, num_classes: int = 3):
        super().__init__(num_classes)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.pool(self.stage1(self.stem(x)))))


def rank_seeded_run(out: Path, crash: bool) -> None:
    """Ranks seeded apart (``torch.manual_seed(1000 + rank)``, as many DDP scripts do; FineTuner's seed
    left None), dropout on, backups every 3 batches; with ``crash`` rank 1 dies in epoch 1 of attempt 0
    and attempt 1 resumes from the backup of the end of epoch 0."""
    rank = env_rank()
    torch.manual_seed(1000 + rank)
    x, y, _, _ = data()
    ft = FineTuner(DropNet(), num_classes=3, image_size=16, device="cpu")
    ft.compile(lr=1e-2)
    callbacks: list[Any] = [BackupAndRestore(out / "bk_rng", save_freq=3)]
    if crash:
        callbacks.insert(0, CrashRankOne(epoch=1))
    ft.fit(x, y, batch_size=BATCH, epochs=3, augment=False, verbose=0, callbacks=callbacks)
    name = "resumed" if crash else "straight"
    save_file(_state(ft), str(out / f"rank_rng_{name}_rank{rank}.safetensors"))


def scenario_nccl(out: Path) -> None:
    """The augmented GroupNorm fit on one GPU per rank (NCCL): ranks end bitwise equal."""
    rank = env_rank()
    x, y, _, _ = data()
    torch.manual_seed(0)
    device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    ft = FineTuner(GNNet(), num_classes=3, image_size=16, device=device, seed=0)
    ft.compile(lr=1e-2)
    ft.fit(x, y, batch_size=BATCH, epochs=2, verbose=0)
    save_file({k: v.cpu() for k, v in _state(ft).items()}, str(out / f"nccl_rank{rank}.safetensors"))


if __name__ == "__main__":
    torch.set_num_threads(1)
    scenario, folder = sys.argv[1], Path(sys.argv[2])
    scenarios = {
        "main": scenario_main,
        "fail": scenario_fail,
        "resume": scenario_resume,
        "backup": scenario_backup,
        "nccl": scenario_nccl,
        "rank_rng_straight": lambda out: rank_seeded_run(out, crash=False),
        "rank_rng_resumed": lambda out: rank_seeded_run(out, crash=True),
    }
    scenarios[scenario](folder)
