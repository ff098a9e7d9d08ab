"""A training run that can be SIGKILLed at a chosen point, for the kill-and-resume tests.

    python tests/resume_script.py STRATEGY BACKUP_DIR OUT [--kill step:N | write:K | val:E] [--reference]
        [--backbone tiny | timm/<name>] [--compile JSON] [--save-freq N] [--workers N]

Runs fit with BackupAndRestore(BACKUP_DIR, save_freq=4). ``--kill step:N`` kills the process after global
batch N, ``write:K`` in the middle of its K-th checkpoint file write (half the bytes on disk),
``val:E`` during the validation pass of epoch E. A run that finishes writes the final weights to
OUT.safetensors and the history to OUT.json; ``--reference`` also trains an uninterrupted run with the same
seed in this process (no callbacks) and writes it to OUT.ref.safetensors. ``--compile '{"ema_decay": 0.9}'``
passes extra compile() options; OUT.safetensors then holds the weights evaluate/predict/save use (the
EMA's when on) and the raw model's too, under ``raw.`` keys.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from helpers import TinyNet, make_images  # noqa: E402

from finetunekit import L2SP, FineTuner  # noqa: E402
from finetunekit.callbacks import BackupAndRestore, Callback  # noqa: E402
from finetunekit.saving import checkpoint  # noqa: E402
from finetunekit.strategies import (  # noqa: E402
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
)

STRATEGIES = {
    "full": FullFineTune,
    "frozen": FrozenBackbone,
    "gradual": lambda: GradualUnfreeze(every=1),
    "discriminative": lambda: DiscriminativeLR(0.5),
    "lpft": lambda: LPFT(probe_epochs=1, finetune_scale=0.5),
}
EPOCHS, BATCH, SAVE_FREQ = 3, 8, 4


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class Killer(Callback):
    def __init__(self, where: str, at: int) -> None:
        super().__init__()
        self.where, self.at = where, at

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        run = self.require_run()
        if self.where == "step" and run.epoch * run.steps_per_epoch + batch == self.at:
            die()

    def on_test_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        if self.where == "val" and self.require_run().epoch == self.at:
            die()


def kill_during_write(k: int) -> None:
    """Make the k-th checkpoint file write stop halfway, the way a SIGKILL mid-write leaves it."""
    real = checkpoint.atomic_write_bytes
    calls = {"n": 0}

    def write(path: str | os.PathLike[str], data: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == k:
            tmp = Path(path).with_name(f".{Path(path).name}.killed.tmp")
            with open(tmp, "wb") as f:
                f.write(data[: len(data) // 2])
            die()
        real(path, data)

    checkpoint.atomic_write_bytes = write  # type: ignore[assignment]


def build(strategy: str, backbone: str) -> FineTuner:
    torch.manual_seed(0)
    if backbone == "tiny":
        return FineTuner(
            TinyNet(num_classes=3), num_classes=3, seed=0, strategy=STRATEGIES[strategy](), device="cpu",
            image_size=16,
        )  # fmt: skip
    return FineTuner(
        backbone, num_classes=3, pretrained=False, seed=0, strategy=STRATEGIES[strategy](), device="cpu",
        image_size=32,
    )  # fmt: skip


def train(
    strategy: str, backbone: str, callbacks: list[Callback], options: dict, workers: int = 0
) -> FineTuner:
    x, y = make_images(60, 3, 16 if backbone == "tiny" else 32, seed=0)
    ft = build(strategy, backbone)
    options = dict(options)
    if options.pop("l2sp", False):
        options["regularizer"] = L2SP(0.01, 0.01)
    ft.compile(lr=1e-2, schedule="one_cycle", **options)
    ft.fit(x, y, batch_size=BATCH, epochs=EPOCHS, verbose=0, validation_split=0.2, callbacks=callbacks,
           num_workers=workers)  # fmt: skip
    return ft


def write(ft: FineTuner, out: str) -> None:
    weights = {k: v.contiguous() for k, v in ft.eval_model.state_dict().items()}
    weights.update({f"raw.{k}": v.contiguous().clone() for k, v in ft.model.state_dict().items()})
    save_file(weights, out + ".safetensors")
    assert ft.history is not None
    Path(out + ".json").write_text(json.dumps({"history": ft.history.history, "epoch": ft.history.epoch}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("strategy", choices=sorted(STRATEGIES))
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--kill", default=None)
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--backbone", default="tiny")
    parser.add_argument("--compile", default="{}")
    parser.add_argument("--save-freq", type=int, default=SAVE_FREQ)
    parser.add_argument("--workers", type=int, default=0)
    args = parser.parse_args()
    options = json.loads(args.compile)
    callbacks: list[Callback] = [BackupAndRestore(args.backup_dir, save_freq=args.save_freq)]
    if args.kill:
        where, at = args.kill.split(":")
        if where == "write":
            kill_during_write(int(at))
        else:
            callbacks.append(Killer(where, int(at)))
    write(train(args.strategy, args.backbone, callbacks, options, args.workers), args.out)
    if args.reference:  # in-process loading: workers must not change a single bit
        write(train(args.strategy, args.backbone, [], options), args.out + ".ref")


if __name__ == "__main__":
    main()
