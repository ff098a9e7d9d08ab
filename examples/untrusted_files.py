"""Files you can trust: a folder with a broken image, a save, and a save someone tampered with.

Writes the digits as a folder of JPEGs (one of them truncated, which PIL's header check would pass),
trains on it with ``ImageFolder(..., on_bad_file="skip")`` (the default, a plain path, would stop
before the first step naming the file), saves atomically, then edits the saved config the way an
attacker could (a NaN mean, with the manifest's checksum recomputed) and shows that loading refuses it
naming the key. See docs/reliability.md.

    PYTHONPATH=. python examples/untrusted_files.py          # FINETUNEKIT_FAST=1 for a quick run
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path

from PIL import Image

from finetunekit import FineTuner
from finetunekit.data import ImageFolder
from finetunekit.demo import load_digits_images
from finetunekit.errors import CheckpointError, DataError

FAST = os.environ.get("FINETUNEKIT_FAST") == "1"


def write_folder(root: Path, n: int) -> Path:
    x, y, _, _ = load_digits_images(seed=0, n_train=n)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).resize((32, 32)).save(root / str(label) / f"{i}.jpg", quality=95)
    broken = sorted(root.rglob("*.jpg"))[0]
    broken.write_bytes(broken.read_bytes()[:-200])  # truncated: the header is intact
    return root


def tamper(folder: Path) -> None:
    """What anyone can do: change a value and recompute the manifest's checksum."""
    config = json.loads((folder / "config.json").read_text())
    config["data_config"]["mean"][0] = float("nan")
    data = json.dumps(config).encode()
    (folder / "config.json").write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["config.json"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = write_folder(Path(tmp) / "digits", 120 if FAST else 800)
        ft = FineTuner(
            "timm/resnet10t", num_classes=10, pretrained=False, image_size=32, seed=0, device="cpu"
        )
        try:
            ft.fit(root, epochs=1, verbose=0)
        except DataError as e:
            print("a plain folder path stops before training:", str(e)[:110], "...")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ft.fit(ImageFolder(root, on_bad_file="skip"), epochs=1 if FAST else 3, batch_size=32, verbose=0)
        print("skip policy:", next(str(w.message)[:100] for w in caught if "skipping" in str(w.message)))
        ft.save(Path(tmp) / "model")
        print("saved:", sorted(p.name for p in (Path(tmp) / "model").iterdir()))
        FineTuner.load(Path(tmp) / "model", device="cpu")
        tamper(Path(tmp) / "model")
        try:
            FineTuner.load(Path(tmp) / "model", device="cpu")
        except CheckpointError as e:
            print("tampered save refused:", str(e).split(" is invalid")[0].rsplit(": ", 1)[-1], "is invalid")


if __name__ == "__main__":
    main()
