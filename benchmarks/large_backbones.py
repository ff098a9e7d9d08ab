"""Parameter-efficient fine-tuning and gradient checkpointing: memory, step time, trainable parameters and
few-shot accuracy of full fine-tuning, LoRA (r=8) and BitFit, each with and without checkpointing.

Cost part (``--cost``): timm ``vit_small_patch16_224`` (22M parameters; architecture only, the cost does
not depend on the weights) at 224 px, ``--batch`` images per step, AdamW, on the CPU. Each configuration
runs ``fit`` in a fresh process: peak memory is that process's peak RSS minus its RSS just before ``fit``
(weights and the pretrained snapshot excluded: gradients, optimizer state and activations remain), step
time the median over the steps after the first.

Accuracy part (``--accuracy``): no ViT weights are available offline, so a small ViT (timm
VisionTransformer, 32 px, patch 4, width 96, depth 4) is pretrained from scratch on scikit-learn's digits
0-4 (all their images) and then fine-tuned few-shot (``--shots`` per class) on digits 5-9, tested on every
other 5-9 image. A second block uses real ImageNet weights, EfficientNet-Lite0 (offline package) on all
ten digits few-shot at 64 px, where LoRA adapts the 1x1 / full convolutions (a CNN has no Linear layer
outside its head). Augmentation is off (a flipped digit is another shape). Mean and spread over seeds.

    PYTHONPATH=. python benchmarks/large_backbones.py --cost --accuracy --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.strategies import BitFit, FrozenBackbone, FullFineTune, LoRA, Strategy

STRATEGIES = {"full": FullFineTune, "lora_r8": lambda: LoRA(rank=8, alpha=16), "bitfit": BitFit}


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        line = next(ln for ln in f if ln.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def trainable(ft: FineTuner) -> int:
    """Parameters that train in epoch 0: the plan's open groups, and in them the strategy's subset."""
    plan = ft.plan(0)
    return sum(
        p.numel() for s, ps in zip(plan, ft._params_by_group, strict=True) if s is not None for p in ps
    )


# --------------------------------------------------------------------------------------------- cost
def cost_worker(strategy: str, checkpoint: bool, batch: int, steps: int) -> dict[str, Any]:
    torch.manual_seed(0)
    ft = FineTuner("timm/vit_small_patch16_224", 10, pretrained=False, strategy=STRATEGIES[strategy](),
                   device="cpu", seed=0)  # fmt: skip
    ft.compile(lr=1e-4, schedule="constant", grad_checkpointing=checkpoint)
    x = torch.randn(batch * steps, 3, 224, 224)
    y = torch.arange(batch * steps) % 10
    times: list[float] = []
    clock = {"t": 0.0}

    def begin(_batch: int, _logs: Any = None) -> None:
        clock["t"] = time.perf_counter()

    def end(_batch: int, _logs: Any = None) -> None:
        times.append(time.perf_counter() - clock["t"])

    before = _rss_mb()
    cb = LambdaCallback(on_train_batch_begin=begin, on_train_batch_end=end)
    ft.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[cb], augment=False)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"peak_mb": peak - before, "step_s": statistics.median(times[1:]), "trainable": trainable(ft),
            "total": sum(p.numel() for p in ft.model.parameters())}  # fmt: skip


def spawn(args: argparse.Namespace, strategy: str, checkpoint: bool) -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # A fixed mmap threshold, so freed activation buffers go back to the OS at once and peak RSS tracks
    # the peak of live memory. With glibc's default sliding threshold, freed large blocks stay in the heap
    # and the peak depended on the order of allocations: LoRA read 1.18x full fine-tuning, and plain peft
    # on timm without finetunekit 1.41x, while the tensors autograd saves were the same size (449 vs 453
    # MB at batch 8).
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        strategy,
        "--batch",
        str(args.batch),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
    ] + (["--ckpt"] if checkpoint else [])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{strategy} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return dict(json.loads(lines[-1][len("RESULT ") :]))


def cost_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for strategy in STRATEGIES:
        for checkpoint in (False, True):
            r = spawn(args, strategy, checkpoint)
            rows.append({"strategy": strategy, "ckpt": checkpoint, **r})
            print(f"  {strategy:8s} ckpt={checkpoint!s:5s} {r}", flush=True)
    base = rows[0]
    print(f"\nvit_small_patch16_224, CPU, batch {args.batch}, {args.threads} thread(s)")
    print("| strategy | grad ckpt | trainable params | x full | peak memory MB | x full | step s | x full |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['strategy']} | {'yes' if r['ckpt'] else 'no'} | {r['trainable']:,} | "
              f"{r['trainable'] / base['trainable']:.4f} | {r['peak_mb']:.0f} | "
              f"{r['peak_mb'] / base['peak_mb']:.2f} | "
              f"{r['step_s']:.2f} | {r['step_s'] / base['step_s']:.2f} |")  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------- accuracy
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = (d.images * (255.0 / 16.0)).round().astype(np.uint8)
    return images, d.target.astype(np.int64)


def small_vit(num_classes: int) -> torch.nn.Module:
    import timm

    return timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, in_chans=1, embed_dim=96, depth=4, num_heads=3, num_classes=num_classes
    )


def pretrain_vit(epochs: int) -> dict[str, torch.Tensor]:
    """From scratch on digits 0-4: the 'pretrained' backbone the few-shot runs start from."""
    x, y = digits()
    keep = y < 5
    torch.manual_seed(0)
    ft = FineTuner(small_vit(5), 5, in_chans=1, image_size=32, device="cpu", seed=0)
    ft.compile(lr=2e-3).fit(x[keep], y[keep], batch_size=64, epochs=epochs, verbose=0, augment=False)
    return {k: v.clone() for k, v in ft.model.state_dict().items()}


def few_shot(x: np.ndarray, y: np.ndarray, shots: int, seed: int, max_test: int) -> tuple[np.ndarray, ...]:
    """``shots`` training images per class; up to ``max_test`` of the others (a random subset) for testing."""
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.choice(np.flatnonzero(y == c), shots, replace=False) for c in np.unique(y)])
    test = np.setdiff1d(np.arange(len(y)), train)
    test = np.sort(rng.choice(test, min(max_test, len(test)), replace=False))
    return x[train], y[train], x[test], y[test]


def accuracy_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    x, y = digits()
    pretrained = pretrain_vit(args.pretrain_epochs)
    x59, y59 = x[y >= 5], y[y >= 5] - 5
    from finetunekit.demo import lite0_weights_path

    setups = {"vit (digits 0-4 pretrained)": {}, "efficientnet_lite0 (ImageNet)": {}}
    strategies: dict[str, Any] = {**STRATEGIES, "frozen (linear probe)": FrozenBackbone}
    rows = []
    for setup in setups:
        for name, make in strategies.items():
            accs = []
            for seed in args.seeds:
                strategy: Strategy = make()
                if setup.startswith("vit"):
                    xtr, ytr, xte, yte = few_shot(x59, y59, args.shots, seed, args.max_test)
                    net = small_vit(5)
                    net.load_state_dict(pretrained)
                    ft = FineTuner(
                        net, 5, in_chans=1, image_size=32, device="cpu", seed=seed, strategy=strategy
                    )
                    lr = 1e-3 if name == "full" else 5e-3
                else:
                    xtr, ytr, xte, yte = few_shot(x, y, args.shots, seed, args.max_test)
                    ft = FineTuner("timm/efficientnet_lite0", 10, weights=lite0_weights_path(),
                                   image_size=64, device="cpu", seed=seed, strategy=strategy)  # fmt: skip
                    lr = 2e-3 if name == "full" else 1e-2
                ft.compile(lr=lr).fit(xtr, ytr, batch_size=16, epochs=args.epochs, verbose=0, augment=False)
                accs.append(ft.evaluate(xte, yte)["accuracy"])
            row = {"setup": setup, "strategy": name, "trainable": trainable(ft), "acc": statistics.mean(accs),
                   "sd": statistics.stdev(accs) if len(accs) > 1 else 0.0}  # fmt: skip
            rows.append(row)
            print(f"  {row}", flush=True)
    print(f"\nfew-shot accuracy, {args.shots} images per class, {args.epochs} epochs, seeds {args.seeds}")
    print("| backbone | strategy | trainable params | accuracy (mean ± sd) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['setup']} | {r['strategy']} | {r['trainable']:,} | {r['acc']:.3f} ± {r['sd']:.3f} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cost", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shots", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--max-test", type=int, default=600, help="held-out images per setup and seed")
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    parser.add_argument("--worker", choices=sorted(STRATEGIES), help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.worker:
        print("RESULT " + json.dumps(cost_worker(args.worker, args.ckpt, args.batch, args.steps)))
        return
    if os.environ.get("FINETUNEKIT_FAST"):
        args.steps, args.batch, args.seeds, args.epochs, args.pretrain_epochs = 2, 2, [0], 1, 1
        args.max_test = 50
    if not (args.cost or args.accuracy):
        args.cost = args.accuracy = True
    if args.cost:
        cost_table(args)
    if args.accuracy:
        accuracy_rows(args)


if __name__ == "__main__":
    main()
