"""A folder of photo-sized JPEGs: finetunekit's decode-once pipeline vs torchvision ImageFolder and the
pre-decoded in-memory bound, in one table with ratios measured in the same run.

The data: scikit-learn's digits, each drawn as a photo (upscaled to ``--sizes`` such as 640x480 and
1600x1200, a coloured digit on a textured, lit background with sensor noise), saved as JPEG quality 90
in one folder per class (generated into a temporary folder, or ``--data-dir`` to keep it).

**Pipeline alone** (decode, resize, augment, collate; no model), images/s over whole epochs of
shuffled batches of 32, augmentation on (RandomResizedCrop + flip, normalized float output):

- ``finetunekit folder``: ``prepare_data(folder, augment=True)`` + ``make_loader`` with its defaults
  (decode cache on, default worker count); first epoch (decodes, setup included), later epochs (cache);
- ``torchvision ImageFolder``: ``ImageFolder`` + ``DataLoader`` + ``transforms.v2`` on PIL images (the
  same crop, flip and normalization), at its best worker count of ``--workers`` (all are shown);
- ``pre-decoded uint8``: the same images decoded once beforehand into a uint8 N×3×H×W tensor at the
  training size, augmented per image with v2 on tensors in-process: the in-memory bound.

**End to end** (timm ``efficientnet_lite0`` with ImageNet weights, ``--image-size`` px, CPU): epoch times
and held-out accuracy of ``FineTuner.fit(folder)`` with every default, of ``FineTuner.fit`` on the
pre-decoded uint8 arrays (the bound), and of a plain loop fed by ImageFolder (best workers above).

Every measured run is its own subprocess, so no run finds another's decode cache warm.

    PYTHONPATH=. python benchmarks/photo_folder.py --sizes 640x480 1600x1200 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PIPELINES = ("ft_folder", "imagefolder", "predecoded")
E2E = ("e2e_ft_folder", "e2e_predecoded", "e2e_imagefolder")


# ------------------------------------------------------------------------------------------------ data
_NOISE: dict[tuple[int, int], np.ndarray] = {}


def _photo(digit: np.ndarray, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """One digit as a photo: a tinted stroke on a lit, textured background, with sensor noise. Drawn at
    half resolution and upscaled (bicubic), then per-pixel noise from a shared tile at a random offset."""
    from PIL import Image

    w, h = width // 2, height // 2
    box = min(w, h) * 3 // 4
    mask = np.asarray(Image.fromarray(digit).resize((box, box), Image.Resampling.BICUBIC), np.float32) / 255
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = 0.75 + 0.25 * np.cos(xx / w * rng.uniform(1, 3) + rng.uniform(0, 6)) * np.cos(yy / h * 2)
    texture = 12 * np.sin(xx / rng.uniform(3, 10)) * np.sin(yy / rng.uniform(3, 10))
    background = rng.uniform(90, 200, 3).astype(np.float32)
    image = background[None, None] * light[..., None] + texture[..., None]
    top, left = rng.integers(0, h - box + 1), rng.integers(0, w - box + 1)
    ink = rng.uniform(0, 80, 3).astype(np.float32)
    region = image[top : top + box, left : left + box]
    region[:] = region * (1 - mask[..., None]) + ink * mask[..., None]
    small = Image.fromarray(image.clip(0, 255).astype(np.uint8))
    full = np.asarray(small.resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    if (width, height) not in _NOISE:
        tile = np.random.default_rng(0).normal(0, 3, (height + 64, width + 64, 3))
        _NOISE[(width, height)] = tile.round().astype(np.int16)
    dy, dx = rng.integers(0, 64, 2)
    noise = _NOISE[(width, height)][dy : dy + height, dx : dx + width]
    return (full + noise).clip(0, 255).astype(np.uint8)


def make_folders(
    root: Path, width: int, height: int, n_train: int, seed: int, with_test: bool = True
) -> tuple[Path, Path]:
    """``root/train/<digit>/<i>.jpg`` and (``with_test``) ``root/test/...`` (the rest of digits), JPEG
    quality 90."""
    from PIL import Image
    from sklearn.datasets import load_digits

    train_dir, test_dir = root / "train", root / "test"
    marker = root / ("done" if with_test else "done-train")
    if marker.exists() or (root / "done").exists():
        return train_dir, test_dir
    digits = load_digits()
    images = np.round(digits.images / 16 * 255).astype(np.uint8)
    order = np.random.default_rng(seed).permutation(len(images))
    rng = np.random.default_rng(seed + 1)
    for rank, i in enumerate(order if with_test else order[:n_train]):
        folder = (train_dir if rank < n_train else test_dir) / str(digits.target[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_photo(images[i], width, height, rng)).save(folder / f"{i}.jpg", quality=90)
    marker.write_text("")
    return train_dir, test_dir


def _config(image_size: int) -> Any:
    from finetunekit.backbones.base import DataConfig

    return DataConfig(input_size=(3, image_size, image_size), interpolation="bicubic")  # Lite0's


def _v2_transform(image_size: int, on_pil: bool) -> Any:
    from torchvision.transforms import v2

    cfg = _config(image_size)
    steps = [
        v2.RandomResizedCrop(
            image_size, scale=(0.35, 1.0), antialias=True, interpolation=v2.InterpolationMode.BICUBIC
        ),
        v2.RandomHorizontalFlip(),
    ]
    tail = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]
    return v2.Compose([*steps, v2.ToImage(), *tail] if on_pil else [*steps, *tail])


def predecoded(folder: Path, image_size: int) -> tuple[torch.Tensor, np.ndarray]:
    """Every file decoded (full size, PIL) and resized once to the training size: N×3×S×S uint8."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    files = ImageFolder(str(folder))
    images = []
    for path, _ in files.samples:
        with Image.open(path) as im:
            small = im.convert("RGB").resize((image_size, image_size), Image.Resampling.BICUBIC)
        images.append(torch.from_numpy(np.asarray(small).copy()).permute(2, 0, 1))
    return torch.stack(images), np.asarray(files.targets, dtype=np.int64)


class TensorImages(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor, labels: np.ndarray, transform: Any) -> None:
        self.images, self.labels, self.transform = images, torch.from_numpy(labels), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[i]), self.labels[i]


# --------------------------------------------------------------------------------------- pipeline runs
def _epochs(loader: Any, epochs: int, setup: float = 0.0) -> list[float]:
    times = []
    for e in range(epochs):
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start + (setup if e == 0 else 0.0))
    return times


def _loader(dataset: Any, workers: int, seed: int) -> Any:
    gen = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=32,
        shuffle=True,
        num_workers=workers,
        generator=gen,
        persistent_workers=workers > 0,
    )


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    folder = Path(args.train_dir)
    if args.worker == "ft_folder":
        from finetunekit.data import make_loader, prepare_data

        start = time.perf_counter()
        data = prepare_data(
            folder, data_config=_config(args.image_size), in_chans=3, augment=True, require_labels=True
        )
        loader = make_loader(data, batch_size=32, shuffle=True, seed=args.seed)
        setup = time.perf_counter() - start
        return {
            "epoch_times": _epochs(loader, args.epochs, setup),
            "setup": setup,
            "workers": loader.num_workers,
        }
    if args.worker == "imagefolder":
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(folder), transform=_v2_transform(args.image_size, on_pil=True))
        return {
            "epoch_times": _epochs(_loader(dataset, args.workers, args.seed), args.epochs),
            "workers": args.workers,
        }
    images, labels = predecoded(folder, args.image_size)
    dataset = TensorImages(images, labels, _v2_transform(args.image_size, on_pil=False))
    return {"epoch_times": _epochs(_loader(dataset, 0, args.seed), args.epochs), "workers": 0}


# ------------------------------------------------------------------------------------------ end to end
def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    from finetunekit import FineTuner
    from finetunekit.callbacks import Callback
    from finetunekit.demo import lite0_weights_path

    times: list[float] = []

    class EpochTimer(Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            times.append(time.perf_counter() - self.start)

    torch.manual_seed(args.seed)
    ft = FineTuner(
        "timm/efficientnet_lite0",
        num_classes=10,
        weights=lite0_weights_path(),
        image_size=args.image_size,
        seed=args.seed,
        device="cpu",
    )
    if args.worker == "e2e_imagefolder":
        return _plain_imagefolder(ft, args)
    ft.compile()
    if args.worker == "e2e_ft_folder":
        ft.fit(args.train_dir, epochs=args.epochs, verbose=0, callbacks=[EpochTimer()])
        acc = ft.evaluate(args.test_dir)["accuracy"]
    else:
        x, y = predecoded(Path(args.train_dir), args.image_size)
        xt, yt = predecoded(Path(args.test_dir), args.image_size)
        ft.fit(x.permute(0, 2, 3, 1).numpy(), y, epochs=args.epochs, verbose=0, callbacks=[EpochTimer()])
        acc = ft.evaluate(xt.permute(0, 2, 3, 1).numpy(), yt)["accuracy"]
    return {"epoch_times": times, "accuracy": acc}


def _plain_imagefolder(ft: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The loop a user writes around ImageFolder: AdamW, the same model and batch size, v2 transforms."""
    from torchvision.datasets import ImageFolder

    model = ft.model
    train = ImageFolder(args.train_dir, transform=_v2_transform(args.image_size, on_pil=True))
    loader = _loader(train, args.workers, args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        model.train()
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - start)
    from torchvision.transforms import v2

    cfg = _config(args.image_size)
    plain = v2.Compose(
        [
            v2.Resize((args.image_size, args.image_size), antialias=True),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(cfg.mean), list(cfg.std)),
        ]
    )
    test = torch.utils.data.DataLoader(ImageFolder(args.test_dir, transform=plain), batch_size=128)
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in test)
    return {"epoch_times": times, "accuracy": hits / len(test.dataset)}


# -------------------------------------------------------------------------------------------- driver
KEYS = ("threads", "epochs", "image_size", "seed", "workers", "train_dir", "test_dir")


def worker(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    out = run_e2e(args) if args.worker.startswith("e2e") else run_pipeline(args)
    print("RESULT " + json.dumps(out))


def _spawn(args: argparse.Namespace, mode: str, **overrides: Any) -> dict[str, Any]:
    sub = argparse.Namespace(**{**vars(args), **overrides})
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", mode]
    for key in KEYS:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(sub, key))]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def _later(times: list[float]) -> float:
    return statistics.median(times[1:]) if len(times) > 1 else times[0]


def measure_size(args: argparse.Namespace, width: int, height: int, e2e: bool) -> list[tuple[str, ...]]:
    root = Path(args.data_dir) / f"{width}x{height}"
    train_dir, test_dir = make_folders(root, width, height, args.n_train, args.seed, with_test=e2e)
    n = sum(1 for _ in train_dir.rglob("*.jpg"))
    base = {"train_dir": train_dir, "test_dir": test_dir}
    folders = {w: _spawn(args, "imagefolder", workers=w, **base) for w in args.workers}
    best_w = min(folders, key=lambda w: _later(folders[w]["epoch_times"]))
    best = _later(folders[best_w]["epoch_times"])
    ft = _spawn(args, "ft_folder", workers=-1, **base)  # finetunekit's own default worker count
    same = ft if ft["workers"] == best_w else _spawn(args, "ft_folder", workers=best_w, **base)
    bound = _spawn(args, "predecoded", workers=0, **base)

    def row(name: str, seconds: float) -> tuple[str, ...]:
        return (name, f"{seconds / n * 1e3:.3f}", f"{n / seconds:.0f}", f"{best / seconds:.2f}x")

    rows = [
        ("pipeline alone", "ms/image", "images/s", "vs ImageFolder best"),
        row(f"finetunekit folder, first epoch (setup {ft['setup']:.2f}s incl.)", ft["epoch_times"][0]),
        row(
            f"finetunekit folder, later epochs ({ft['workers']} workers, default)", _later(ft["epoch_times"])
        ),
    ]
    if same is not ft:
        rows.append(row(f"finetunekit folder, later epochs ({best_w} workers)", _later(same["epoch_times"])))
    rows += [
        row(
            f"torchvision ImageFolder, {w} workers{' (best)' if w == best_w else ''}",
            _later(r["epoch_times"]),
        )
        for w, r in folders.items()
    ]
    rows.append(row("pre-decoded uint8 tensor (bound)", _later(bound["epoch_times"])))
    if e2e:
        rows += _e2e_rows(args, base, best_w)
    return rows


def _e2e_rows(args: argparse.Namespace, base: dict[str, Any], best_w: int) -> list[tuple[str, ...]]:
    e2e_args = {**base, "epochs": args.e2e_epochs, "workers": best_w}
    runs = {mode: _spawn(args, mode, **e2e_args) for mode in E2E}
    bound = _later(runs["e2e_predecoded"]["epoch_times"])
    rows = [
        (
            f"end to end (Lite0 {args.image_size}px, fit defaults)",
            "epoch s (after 1st)",
            "first epoch s",
            "time vs bound, accuracy",
        )
    ]
    names = {
        "e2e_ft_folder": "finetunekit fit(folder)",
        "e2e_predecoded": "finetunekit fit(pre-decoded uint8, bound)",
        "e2e_imagefolder": f"plain loop on ImageFolder ({best_w} workers)",
    }
    for mode, r in runs.items():
        later = _later(r["epoch_times"])
        rows.append(
            (
                names[mode],
                f"{later:.2f}",
                f"{r['epoch_times'][0]:.2f}",
                f"{later / bound:.3f}x, acc {r['accuracy']:.3f}",
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", choices=PIPELINES + E2E, help=argparse.SUPPRESS)
    parser.add_argument("--train-dir", help=argparse.SUPPRESS)
    parser.add_argument("--test-dir", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", nargs="+", default=["640x480", "1600x1200"])
    parser.add_argument("--e2e-sizes", nargs="*", default=["640x480"], help="sizes also run end to end")
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="pipeline epochs per run")
    parser.add_argument("--e2e-epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2, 3], help="ImageFolder's tried")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir", default=None, help="keep the generated JPEGs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.worker:
        args.workers = args.workers[0]
        worker(args)
        return
    with tempfile.TemporaryDirectory() as tmp:
        args.data_dir = args.data_dir or tmp
        decode_dir = Path(tmp) / "decode-cache"  # only used over the memory budget; never ~/.cache here
        os.environ.setdefault("FINETUNEKIT_DECODE_CACHE", str(decode_dir))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {load:.1f} at start; "
            f"torch {torch.__version__}; torch.set_num_threads({args.threads}) per process"
        )
        print(
            f"digits as JPEG photos (quality 90), {args.n_train} training files, {args.image_size}px "
            f"training size, batch 32, augment on\n"
        )
        for size in args.sizes:
            width, height = map(int, size.split("x"))
            rows = measure_size(args, width, height, size in args.e2e_sizes)
            print(f"== {size} files")
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            for r in rows:
                print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
            print()
        end = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load average {end:.1f} at the end")


if __name__ == "__main__":
    main()
