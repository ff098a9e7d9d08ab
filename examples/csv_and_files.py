"""Images as files: train from a CSV of paths and class names, then predict on a flat folder of new files.

    pip install -e ".[demo]" pandas
    python examples/csv_and_files.py        # FINETUNEKIT_FAST=1 for a quick run (CI)

Writes scikit-learn's digits as PNG files with a ``labels.csv`` (columns ``file``, ``digit`` as a word,
``is_valid``), reads it with ``finetunekit.data.from_csv`` (fastai's ``from_csv``), trains with the class
weights balanced, and predicts on a folder of files it has never seen, reporting each file's name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from sklearn.datasets import load_digits

from finetunekit import FineTuner
from finetunekit.data import from_csv
from finetunekit.demo import lite0_weights_path

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]

digits = load_digits()
images = np.round(digits.images / 16 * 255).astype(np.uint8)
n_train, n_new = (120, 20) if FAST else (600, 100)

with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    (root / "train").mkdir()
    (root / "new").mkdir()
    rows = []
    for i in range(n_train):
        name = f"train/{i:04d}.png"
        Image.fromarray(images[i]).save(root / name)
        rows.append({"file": name, "digit": WORDS[digits.target[i]], "is_valid": i % 5 == 0})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    for i in range(n_train, n_train + n_new):  # a flat folder of new photos, no labels
        Image.fromarray(images[i]).save(root / "new" / f"img_{i}.png")

    train, valid = from_csv(root / "labels.csv", path_col="file", label_col="digit", valid_col="is_valid")
    print(f"{len(train)} training files, {len(valid)} validation files, classes {train.class_names}")

    ft = FineTuner("timm/efficientnet_lite0", num_classes=10, weights=lite0_weights_path(),
                   image_size=32 if FAST else 64, seed=0)  # fmt: skip
    ft.compile(metrics=["accuracy", "f1_macro"])
    ft.fit(train, validation_data=valid, epochs=1 if FAST else 6, augment=False, class_weight="balanced",
           verbose=2)  # fmt: skip

    probs, files = ft.predict(root / "new", return_paths=True)  # rows in file-name order
    for path, row in list(zip(files, probs, strict=True))[:5]:
        print(Path(path).name, "->", ft.class_names[int(row.argmax())], f"({row.max():.2f})")
    truth = np.array([digits.target[int(Path(f).stem.split("_")[1])] for f in files])
    names = np.array(ft.class_names)[probs.argmax(1)]
    print("accuracy on the new folder:", float(np.mean(names == np.array(WORDS)[truth])))
