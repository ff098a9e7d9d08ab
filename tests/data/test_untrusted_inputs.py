"""Inputs that used to fail after training started, or to be wrong silently: each is now found before the
first step (the error names the file or the value, no step is taken, the weights are unchanged), or
handled and said once.

Tables: undecodable image files, weights files that are not what their suffix says, a last batch of
one sample vs BatchNorm; plus 16-bit PNGs, EXIF orientation and the layout / untrained warnings.
"""

from __future__ import annotations

import io
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from PIL import Image, ImageOps
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.data import ImageFolder
from finetunekit.data.images import load_image, to_8bit
from finetunekit.errors import ConfigError, DataError, WeightsMismatchError


def tuner(net: nn.Module | None = None, **kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(net or TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0, **kw)


def weights(ft: FineTuner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in ft.model.state_dict().items()}


def unchanged(ft: FineTuner, before: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(before[k], v) for k, v in ft.model.state_dict().items())


def step_counter() -> tuple[list[int], LambdaCallback]:
    steps: list[int] = []
    return steps, LambdaCallback(on_train_batch_begin=lambda batch, logs: steps.append(batch))


def jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    pixels = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def image_folder(root: Path, per_class: int = 6, classes: tuple[str, ...] = ("a", "b", "c")) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg_bytes(10 * c + i))
    return root


def _png_truncated() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(out, "PNG")
    return out.getvalue()[:-30]


BAD_FILES: list[tuple[str, str, Callable[[], bytes]]] = [
    ("truncated JPEG (passes verify())", "bad.jpg", lambda: jpeg_bytes(99)[:-400]),
    ("JPEG cut to its header", "bad.jpg", lambda: jpeg_bytes(98)[:700]),
    ("truncated PNG", "bad.png", _png_truncated),
    ("text named .png", "bad.png", lambda: b"not an image at all"),
    ("empty .jpg", "bad.jpg", lambda: b""),
]


@pytest.mark.parametrize(("case", "name", "content"), BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_an_undecodable_file_fails_before_the_first_step(
    tmp_path: Path, case: str, name: str, content: Callable[[], bytes]
) -> None:
    root = image_folder(tmp_path / "data")
    (root / "b" / name).write_bytes(content())
    ft = tuner()
    before = weights(ft)
    steps, counter = step_counter()
    with pytest.raises(DataError, match="cannot be decoded") as info:
        ft.fit(root, batch_size=4, epochs=1, verbose=0, callbacks=[counter])
    assert str(root / "b" / name) in str(info.value) and "on_bad_file='skip'" in str(info.value)
    assert steps == [] and unchanged(ft, before)


def test_skip_policy_leaves_bad_files_out_and_says_so_once(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data")
    (root / "a" / "bad.jpg").write_bytes(jpeg_bytes(7)[:-400])
    (root / "c" / "bad.png").write_bytes(b"junk")
    steps, counter = step_counter()
    with pytest.warns(RuntimeWarning, match="skipping 2 of 20 image file") as caught:
        tuner().fit(
            ImageFolder(root, on_bad_file="skip"), batch_size=6, epochs=1, verbose=0, callbacks=[counter]
        )
    assert len([w for w in caught if "skipping" in str(w.message)]) == 1
    assert len(steps) == 3  # 18 good files, batch_size 6


def test_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="on_bad_file='ignore'"):
        ImageFolder(tmp_path, on_bad_file="ignore")


# -- weights files -----------------------------------------------------------------------------------
def _zip_file(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")


def _safetensors(path: Path) -> None:
    save_file({"stem.0.weight": torch.zeros(8, 3, 3, 3)}, str(path))


def _truncated_safetensors(path: Path) -> None:
    _safetensors(path)
    path.write_bytes(path.read_bytes()[:-100])


WEIGHT_FILES: list[tuple[str, str, Callable[[Path], Any], str]] = [
    (
        "truncated .safetensors",
        "w.safetensors",
        _truncated_safetensors,
        "a safetensors file (possibly truncated)",
    ),
    (
        "pickle named .safetensors",
        "w.safetensors",
        lambda p: p.write_bytes(pickle.dumps({"a": 1})),
        "a pickle",
    ),
    ("torch.save zip named .safetensors", "w.safetensors", _zip_file, "a torch.save (zip) file"),
    ("empty .safetensors", "w.safetensors", lambda p: p.write_bytes(b""), "empty"),
    ("text named .pth", "w.pth", lambda p: p.write_text("hello"), "of an unknown kind"),
    ("safetensors named .pth", "w.pth", _safetensors, "a safetensors file"),
]


@pytest.mark.parametrize(("case", "name", "make", "kind"), WEIGHT_FILES, ids=[c[0] for c in WEIGHT_FILES])
def test_weights_files_that_are_not_what_their_suffix_says(
    tmp_path: Path, case: str, name: str, make: Callable[[Path], Any], kind: str
) -> None:
    path = tmp_path / name
    make(path)
    with pytest.raises(WeightsMismatchError) as info:
        tuner(weights=path)
    assert str(path) in str(info.value) and kind in str(info.value), str(info.value)


# -- a last batch of one sample ----------------------------------------------------------------------
class PooledBNNet(nn.Module):
    """BatchNorm1d after global pooling: one value per channel per sample, so a batch of one crashes."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.neck = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.neck(self.stem(x)))


X17, Y17 = make_images(17, 3, 16, seed=3)


def test_a_last_batch_of_one_is_dropped_and_said_once() -> None:
    steps, counter = step_counter()
    with pytest.warns(RuntimeWarning, match="last training batch would hold 1 sample.*dropped") as caught:
        tuner(PooledBNNet()).fit(X17, Y17, batch_size=8, epochs=2, verbose=0, callbacks=[counter])
    assert len([w for w in caught if "1 sample" in str(w.message)]) == 1
    assert steps == [0, 1, 0, 1]  # 2 batches of 8 per epoch; the 17th sample is left out


LAST_BATCH: list[tuple[str, Callable[[], Any], str]] = [
    (
        "a user's DataLoader",
        lambda: DataLoader(TensorDataset(torch.randn(17, 3, 16, 16), torch.tensor(Y17)), batch_size=8),
        "drop_last=True",
    ),
    ("a single sample", lambda: (X17[:1], Y17[:1]), "1 samples"),
]


@pytest.mark.parametrize(("case", "data", "words"), LAST_BATCH, ids=[c[0] for c in LAST_BATCH])
def test_a_last_batch_of_one_that_cannot_be_dropped_is_refused(
    case: str, data: Callable[[], Any], words: str
) -> None:
    ft = tuner(PooledBNNet())
    before = weights(ft)
    steps, counter = step_counter()
    x = data()
    args = x if isinstance(x, tuple) else (x,)
    with pytest.raises(DataError, match="BatchNorm") as info:
        ft.fit(*args, batch_size=8, epochs=1, verbose=0, callbacks=[counter])
    assert words in str(info.value)
    assert steps == [] and unchanged(ft, before)


def test_batchnorm_on_feature_maps_keeps_the_last_batch_of_one() -> None:
    steps, counter = step_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # TinyNet's BatchNorm2d sees 16x16 maps: no warning
        tuner().fit(X17, Y17, batch_size=8, epochs=1, verbose=0, callbacks=[counter])
    assert steps == [0, 1, 2]


# -- pixels as photo tools show them -------------------------------------------------------------------
def test_a_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode.startswith("I")  # PIL's own convert("L") would make 40000 white
    loaded = load_image(tmp_path / "deep.png", in_chans=3)
    assert loaded.shape == (3, 1, 4)
    assert loaded[0, 0].tolist() == [0, 1, 156, 255]  # round(v * 255 / 65535)


def test_32_bit_and_float_images_are_scaled_or_refused() -> None:
    as_int = to_8bit(Image.fromarray(np.array([[0, 65535]], dtype=np.int32), mode="I"), "x")
    assert np.asarray(as_int).tolist() == [[0, 255]]
    as_float = to_8bit(Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), mode="F"), "x")
    assert np.asarray(as_float).tolist() == [[0, 128, 255]]
    with pytest.raises(DataError, match="floating-point image"):
        to_8bit(Image.fromarray(np.array([[-5.0, 900.0]], dtype=np.float32), mode="F"), "x")


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    pixels = np.zeros((10, 20, 3), np.uint8)  # 10 high, 20 wide; one red corner marks the orientation
    pixels[0, 0] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display", as phones store portrait photos
    Image.fromarray(pixels).save(tmp_path / "phone.png", exif=exif)
    loaded = load_image(tmp_path / "phone.png", in_chans=3)
    with Image.open(tmp_path / "phone.png") as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert loaded.shape == (3, 20, 10)  # upright: now 20 high, 10 wide
    assert np.array_equal(loaded.permute(1, 2, 0).numpy(), expected)
    assert loaded[:, 0, 9].tolist() == [255, 0, 0]  # the corner moved where a viewer shows it


# -- layouts that train, but probably not as meant ----------------------------------------------------
def test_fewer_class_folders_than_num_classes_is_a_warning(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", classes=("a", "b"))
    with pytest.warns(RuntimeWarning, match=r"2 class subfolders .* num_classes=3: labels 2..2 never occur"):
        tuner().fit(root, batch_size=4, epochs=1, verbose=0)


def test_an_empty_class_folder_is_a_warning(tmp_path: Path) -> None:
    root = image_folder(tmp_path / "data", classes=("a", "c"))
    (root / "b").mkdir()
    with pytest.warns(RuntimeWarning, match=r"class folder\(s\) \['b'\] hold no images"):
        tuner().fit(root, batch_size=4, epochs=1, verbose=0)


def test_predict_and_evaluate_before_training_warn_and_after_do_not(tmp_path: Path) -> None:
    x, y = make_images(12, 3, 16, seed=0)
    ft = tuner()
    with pytest.warns(RuntimeWarning, match="predict.. runs before any training"):
        ft.predict(x)
    with pytest.warns(RuntimeWarning, match="evaluate.. runs before any training"):
        ft.evaluate(x, y)
    ft.fit(x, y, batch_size=4, epochs=1, verbose=0)
    ft.save(tmp_path / "m")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        ft.predict(x)
        FineTuner.load(tmp_path / "m", model=TinyNet(num_classes=3), device="cpu").predict(x)


def test_a_16_bit_pil_image_from_a_dataset_is_scaled_too() -> None:
    from finetunekit.data.transforms import to_chw_uint8

    image = Image.fromarray(np.array([[40000, 65535]], dtype=np.uint16))
    tensor = to_chw_uint8(image, 3, "x[0]")
    assert tensor is not None and tensor[:, 0].tolist() == [[156, 255]] * 3
