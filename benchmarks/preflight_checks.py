"""What the checks of docs/reliability.md cost: decoding every image file up front, and saving / loading
through the one writer (staging folder + manifest + locked swap) with verification.

Prints two tables of median times (1 torch thread, CPU), each with ratios to a baseline measured in the
same run: per JPEG file, PIL's header check (what finetunekit did before), the up-front decode at
reduced size (what it does now) and a full decode (what an epoch does); per save of a real timm
architecture (pretrained=False), ``ft.save`` against writing the same bytes with plain
``safetensors.torch.save_file`` + ``json.dump`` (no fsync, no manifest), and ``FineTuner.load`` against
``safetensors.torch.load_file``.

    PYTHONPATH=. python benchmarks/preflight_checks.py [--files 400] [--side 224] [--model timm/resnet18]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from finetunekit import FineTuner
from finetunekit.data.images import check_files


def photo_like(seed: int, side: int) -> bytes:
    """A smooth random image (compresses like a photo, unlike white noise), saved as JPEG q=90."""
    rng = np.random.default_rng(seed)
    small = rng.random((side // 16, side // 16, 3)) * 255
    image = Image.fromarray(small.astype(np.uint8)).resize((side, side), Image.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def median_time(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def header_check(files: list[Path]) -> None:
    for path in files:
        with Image.open(path) as image:
            image.verify()


def full_decode(files: list[Path]) -> None:
    for path in files:
        with Image.open(path) as image:
            image.load()


def image_table(root: Path, n: int, side: int, repeats: int) -> None:
    files = []
    for i in range(n):
        files.append(root / f"{i}.jpg")
        files[-1].write_bytes(photo_like(i, side))
    kb = sum(f.stat().st_size for f in files) / n / 1024
    rows = [
        ("header check, Image.verify() (before)", median_time(lambda: header_check(files), repeats)),
        ("up-front decode at reduced size (now)", median_time(lambda: check_files(files, "x"), repeats)),
        ("full decode (what each epoch does)", median_time(lambda: full_decode(files), repeats)),
    ]
    base = rows[2][1]
    print(f"\n{n} JPEG files, {side}x{side}, {kb:.0f} KB each; median of {repeats}")
    print("| per file | ms | x full decode |\n|---|---:|---:|")
    for name, t in rows:
        print(f"| {name} | {1000 * t / n:.3f} | {t / base:.3f} |")


def plain_load(ft: FineTuner, root: Path) -> None:
    model = FineTuner(ft.spec, num_classes=10, pretrained=False, device="cpu", image_size=64).model
    model.load_state_dict(load_file(str(root / "plain" / "model.safetensors")))


def save_table(root: Path, model: str, repeats: int) -> None:
    ft = FineTuner(model, num_classes=10, pretrained=False, device="cpu", image_size=64)
    state = {k: v.contiguous().clone() for k, v in ft.model.state_dict().items()}
    config = ft._model_config()

    def plain_save() -> None:
        (root / "plain").mkdir(exist_ok=True)
        save_file(state, str(root / "plain" / "model.safetensors"))
        (root / "plain" / "config.json").write_text(json.dumps(config))

    rows = [
        ("plain save_file + json.dump (baseline)", median_time(plain_save, repeats)),
        ("ft.save (staging, fsync, manifest, swap)", median_time(lambda: ft.save(root / "m"), repeats)),
        ("build the model + plain load_file (baseline)", median_time(lambda: plain_load(ft, root), repeats)),
        (
            "FineTuner.load (sha256, value checks, build)",
            median_time(lambda: FineTuner.load(root / "m", device="cpu"), repeats),
        ),
    ]
    mb = (root / "m" / "model.safetensors").stat().st_size / 2**20
    print(f"\n{model} (pretrained=False), {mb:.0f} MB of weights; median of {repeats}")
    print("| what | ms | x baseline |\n|---|---:|---:|")
    for i, (name, t) in enumerate(rows):
        print(f"| {name} | {1000 * t:.1f} | {t / rows[i - i % 2][1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--side", type=int, default=224)
    parser.add_argument("--model", default="timm/resnet18")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        image_table(Path(tmp), args.files, args.side, args.repeats)
        save_table(Path(tmp), args.model, args.repeats)


if __name__ == "__main__":
    main()
