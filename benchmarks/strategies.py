"""Each fine-tuning strategy vs a plain PyTorch full-fine-tuning loop, on a domain-shifted small data set.

Data: scikit-learn's digits (8x8 grayscale, nothing like ImageNet), ``--n-train`` images for training,
the rest (about 1,500) held out. Model: real ImageNet EfficientNet-Lite0 weights (offline package) at
64 px. Every run gets the SAME preprocessed float tensors (bilinear resize to 64 px, grayscale repeated to
3 channels, ImageNet mean/std), the same epochs, batch size and seed; augmentation is off, because the
default augmentation flips horizontally, which turns digits into other shapes.

The plain loop uses no finetunekit at all: timm model, weights loaded by position, AdamW over all
parameters at the same lr and weight decay, constant LR, cross-entropy. Times are training wall time
(``fit`` only), measured in the same process, so ratios are comparable; absolute seconds depend on the
machine's load.

    PYTHONPATH=. python benchmarks/strategies.py --seeds 0 1 2 --threads 1 --out /tmp/strategies.jsonl
    PYTHONPATH=. python benchmarks/strategies.py --report /tmp/strategies.jsonl

``--only NAME ...`` runs a subset (several processes can append to one --out file); ``--invert`` uses
black-on-white digits, a second domain shift.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from finetunekit import FineTuner
from finetunekit.demo import lite0_weights_path, load_digits_images
from finetunekit.strategies import (
    LPFT,
    DiscriminativeLR,
    FrozenBackbone,
    FullFineTune,
    GradualUnfreeze,
    Strategy,
)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def preprocess(images: np.ndarray, size: int, invert: bool) -> torch.Tensor:
    """uint8 N x 8 x 8 -> float N x 3 x size x size, normalized; done once, shared by every run."""
    x = torch.from_numpy(images).float().unsqueeze(1) / 255.0
    if invert:
        x = 1.0 - x
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return ((x.repeat(1, 3, 1, 1) - MEAN) / STD).contiguous()


# ------------------------------------------------------------------------------------- plain PyTorch
def plain_model(weights: str, num_classes: int = 10) -> nn.Module:
    """timm EfficientNet-Lite0 with a new head and the offline weights loaded by position."""
    import timm

    model = timm.create_model("efficientnet_lite0", num_classes=num_classes, pretrained=False)
    src = torch.load(weights, map_location="cpu", weights_only=True)
    src_vals = [v for k, v in src.items() if not k.startswith("_fc.")]
    dst_keys = [k for k in model.state_dict() if not k.startswith("classifier.")]
    assert len(src_vals) == len(dst_keys)
    state = {}
    for k, v in zip(dst_keys, src_vals, strict=True):
        assert model.state_dict()[k].shape == v.shape, k
        state[k] = v
    model.load_state_dict(state, strict=False)
    return model


def plain_run(
    data: tuple[torch.Tensor, ...], args: argparse.Namespace, seed: int, lr: float
) -> tuple[float, float]:
    x, y, xt, yt = data
    torch.manual_seed(seed)
    model = plain_model(args.weights)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, generator=gen
    )
    start = time.perf_counter()
    model.train()
    for _ in range(args.epochs):
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xt[i : i + 256]).argmax(1) for i in range(0, len(xt), 256)])
    return float((pred == yt).float().mean()), seconds


# ---------------------------------------------------------------------------------------- finetunekit
def tuner_run(
    strategy: Strategy | list[Strategy] | None,
    compile_kwargs: dict[str, Any],
    data: tuple[torch.Tensor, ...],
    args: argparse.Namespace,
    seed: int,
) -> tuple[float, float]:
    x, y, xt, yt = data
    ft = FineTuner(
        "timm/efficientnet_lite0", num_classes=10, weights=args.weights, image_size=args.image_size,
        seed=seed, strategy=strategy, device="cpu",
    )  # fmt: skip
    ft.compile(**compile_kwargs)
    start = time.perf_counter()
    ft.fit(x, y, batch_size=args.batch_size, epochs=args.epochs, verbose=0, augment=False)
    seconds = time.perf_counter() - start
    return ft.evaluate(xt, yt, batch_size=256)["accuracy"], seconds


def configs(lr: float) -> dict[str, Callable[[], tuple[Any, dict[str, Any]]]]:
    """name -> (strategy, compile kwargs). ``FineTuner(...)`` + ``compile()`` with no arguments first."""
    return {
        "defaults: FineTuner() + compile()": lambda: (None, {}),
        "FullFineTune, one_cycle": lambda: (FullFineTune(), {"lr": lr, "schedule": "one_cycle"}),
        "FullFineTune, constant LR": lambda: (FullFineTune(), {"lr": lr, "schedule": "constant"}),
        "FullFineTune, cosine": lambda: (FullFineTune(), {"lr": lr, "schedule": "cosine"}),
        "FullFineTune, one_cycle, lr/3": lambda: (FullFineTune(), {"lr": lr / 3}),
        "FullFineTune, one_cycle, lr*3": lambda: (FullFineTune(), {"lr": lr * 3}),
        "FullFineTune, one_cycle, lr*2/3": lambda: (FullFineTune(), {"lr": lr * 2 / 3}),
        "FrozenBackbone": lambda: (FrozenBackbone(), {"lr": lr}),
        "GradualUnfreeze(every=1)": lambda: (GradualUnfreeze(every=1), {"lr": lr}),
        "DiscriminativeLR(0.5)": lambda: (DiscriminativeLR(0.5), {"lr": lr}),
        "LPFT(1), schedule restarts": lambda: (LPFT(probe_epochs=1), {"lr": lr}),
        "LPFT(1), one schedule": lambda: (LPFT(probe_epochs=1, restart_schedule=False), {"lr": lr}),
        "LPFT(1, finetune_scale=0.5)": lambda: (LPFT(probe_epochs=1, finetune_scale=0.5), {"lr": lr}),
        "LPFT(1, finetune_scale=0.5), one schedule": lambda: (
            LPFT(probe_epochs=1, finetune_scale=0.5, restart_schedule=False),
            {"lr": lr},
        ),
        "LPFT(1, finetune_scale=0.1)": lambda: (LPFT(probe_epochs=1, finetune_scale=0.1), {"lr": lr}),
        "[GradualUnfreeze(1), DiscriminativeLR(0.7)]": lambda: (
            [GradualUnfreeze(every=1), DiscriminativeLR(0.7)],
            {"lr": lr},
        ),
    }


PLAIN = "plain PyTorch loop (AdamW, constant LR)"
PLAIN_LOW = "plain PyTorch loop, lr/3"


def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    table = configs(args.lr)
    every = [PLAIN, PLAIN_LOW, *table]
    names = every if not args.only else [n for n in args.only if n in every]
    for seed in args.seeds:
        x, y, xt, yt = load_digits_images(seed, args.n_train)
        xt, yt = xt[: args.n_test], yt[: args.n_test]
        data = (
            preprocess(x, args.image_size, args.invert),
            torch.from_numpy(y),
            preprocess(xt, args.image_size, args.invert),
            torch.from_numpy(yt),
        )
        for name in names:
            if name in (PLAIN, PLAIN_LOW):
                acc, sec = plain_run(data, args, seed, args.lr / (3 if name == PLAIN_LOW else 1))
            else:
                strategy, kwargs = table[name]()
                acc, sec = tuner_run(strategy, kwargs, data, args, seed)
            row = {"run": name, "seed": seed, "accuracy": acc, "seconds": sec, "invert": args.invert,
                   "lr": args.lr, "epochs": args.epochs, "n_train": args.n_train}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    return rows


def report(rows: list[dict[str, Any]]) -> str:
    """Markdown table: mean (min-max) held-out accuracy over seeds, mean time, time ratio vs plain."""
    names = list(dict.fromkeys(r["run"] for r in rows))
    plain_t = statistics.median(r["seconds"] for r in rows if r["run"] == PLAIN) if PLAIN in names else None
    lines = [
        "| run | held-out acc, mean (min-max) | seeds | train s (median) | time / plain |",
        "|---|---|---|---|---|",
    ]
    for n in names:
        accs = [r["accuracy"] for r in rows if r["run"] == n]
        secs = [r["seconds"] for r in rows if r["run"] == n]
        ratio = f"{statistics.median(secs) / plain_t:.2f}" if plain_t else "-"
        lines.append(
            f"| {n} | {statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f}) | {len(accs)} | "
            f"{statistics.median(secs):.1f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=300)
    parser.add_argument("--n-test", type=int, default=800, help="held-out images (of the ~1,500 left)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="the base lr rows share (docs table: 3e-3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--invert", action="store_true", help="white digits -> black on white")
    parser.add_argument("--only", nargs="*", help="run only these names")
    parser.add_argument("--out", help="append one JSON line per run here")
    parser.add_argument("--report", help="only print the table for this JSON-lines file")
    args = parser.parse_args(argv)
    if args.report:
        with open(args.report) as f:
            print(report([json.loads(line) for line in f if line.strip()]))
        return
    torch.set_num_threads(args.threads)
    args.weights = lite0_weights_path()
    print(f"digits{' (inverted)' if args.invert else ''}: {args.n_train} train / {args.n_test} held-out "
          f"images, EfficientNet-Lite0 (ImageNet weights) at {args.image_size}px, {args.epochs} epochs, "
          f"batch {args.batch_size}, "
          f"lr {args.lr}, {args.threads} threads, seeds {args.seeds}")  # fmt: skip
    print(report(run_all(args)))


if __name__ == "__main__":
    main()
