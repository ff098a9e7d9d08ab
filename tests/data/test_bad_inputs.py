# ruff: noqa: E501  (the case table reads best one case per line)
"""Every bad input a user can make gets a FineTuneKitError naming the value, the expectation and a fix,
raised before any optimizer step (the weights are checked unchanged after each case).

Table-driven: each case is (what the user does, the error class, words the message must contain).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from PIL import Image
from torch.utils.data import DataLoader, Dataset, TensorDataset

from finetunekit import FineTuner
from finetunekit.callbacks import BackupAndRestore
from finetunekit.errors import (
    BackboneNotFoundError,
    CheckpointError,
    ConfigError,
    DataError,
    DataTypeError,
    FineTuneKitError,
    WeightsMismatchError,
)
from finetunekit.strategies import DiscriminativeLR, FrozenBackbone, Strategy

X, Y = make_images(24, 3, 16, seed=0)
FLOAT = torch.randn(24, 3, 16, 16)


def tuner(**kw: Any) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0, **kw)


class ListDataset(Dataset):
    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


class WrongGroups(Strategy):
    def plan(self, n_groups: int, epoch: int) -> list[float | None]:
        return [1.0, 1.0]


def image_folder(root: Path, classes: list[str], n: int = 2, size: int = 16) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(np.full((size, size, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    return root


def saved_model(tmp: Path) -> Path:
    ft = tuner()
    ft.save(tmp / "model")
    return tmp / "model"


class MakesFile:
    """Unpickling this creates a file: proof that a payload ran."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self) -> Any:
        return (open, (self.target, "w"))


# -- the cases: each takes tmp_path and the tuner, and does one bad thing ------------------------------
Do = Callable[[Path, FineTuner], Any]


def fit(x: Any, y: Any = None, **kw: Any) -> Do:
    kw.setdefault("epochs", 1)
    return lambda tmp, ft: ft.fit(x, y, batch_size=kw.pop("batch_size", 8), verbose=0, **kw)


def corrupt_folder(tmp: Path, ft: FineTuner) -> None:
    root = image_folder(tmp / "data", ["a", "b", "c"])
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ft.fit(str(root), epochs=1, verbose=0)


def disagreeing_folders(tmp: Path, ft: FineTuner) -> None:
    train = image_folder(tmp / "train", ["cat", "dog", "fox"])
    val = image_folder(tmp / "val", ["cat", "dog", "owl"])
    ft.fit(str(train), validation_data=str(val), epochs=1, verbose=0)


def only_hidden_folders(tmp: Path, ft: FineTuner) -> None:
    image_folder(tmp / "data", [".ipynb_checkpoints"])
    ft.fit(str(tmp / "data"), epochs=1, verbose=0)


def non_image_folder(tmp: Path, ft: FineTuner) -> None:
    for c in ("a", "b"):
        (tmp / "data" / c).mkdir(parents=True)
        (tmp / "data" / c / "notes.txt").write_text("hello")
    ft.fit(str(tmp / "data"), epochs=1, verbose=0)


def too_many_class_folders(tmp: Path, ft: FineTuner) -> None:
    ft.fit(str(image_folder(tmp / "data", ["a", "b", "c", "d"])), epochs=1, verbose=0)


def too_small_for_backbone(tmp: Path, ft: FineTuner) -> None:
    torch.manual_seed(0)
    big = FineTuner("timm/resnet10t", num_classes=3, pretrained=False, device="cpu", image_size=32)
    before = {k: v.clone() for k, v in big.model.state_dict().items()}
    try:
        big.fit(torch.randn(8, 3, 8, 8), np.arange(8) % 3, epochs=1, verbose=0, augment=False)
    finally:
        assert all(torch.equal(before[k], v) for k, v in big.model.state_dict().items())


def truncated_checkpoint(tmp: Path, ft: FineTuner) -> None:
    folder = saved_model(tmp)
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    FineTuner.load(folder, model=TinyNet(num_classes=3))


def pickle_payload_checkpoint(tmp: Path, ft: FineTuner) -> None:
    folder = saved_model(tmp)
    (folder / "model.safetensors").write_bytes(pickle.dumps(MakesFile(str(tmp / "pwned"))))
    try:
        FineTuner.load(folder, model=TinyNet(num_classes=3))
    finally:
        assert not (tmp / "pwned").exists()


def pickle_payload_weights(tmp: Path, ft: FineTuner) -> None:
    path = tmp / "weights.pth"
    torch.save({"state_dict": MakesFile(str(tmp / "pwned"))}, path)
    try:
        FineTuner(TinyNet(num_classes=3), num_classes=3, weights=path, device="cpu")
    finally:
        assert not (tmp / "pwned").exists()


def resume_other_architecture(tmp: Path, ft: FineTuner) -> None:
    torch.manual_seed(0)
    other = FineTuner(TinyNet(num_classes=3), num_classes=3, device="cpu", image_size=16, seed=0,
                      strategy=FrozenBackbone())  # fmt: skip
    other.fit(
        X, Y, batch_size=8, verbose=0, callbacks=[BackupAndRestore(tmp / "bk", delete_checkpoint=False)]
    )
    ft.fit(X, Y, batch_size=8, verbose=0, callbacks=[BackupAndRestore(tmp / "bk")])


def resume_other_num_classes(tmp: Path, ft: FineTuner) -> None:
    torch.manual_seed(0)
    other = FineTuner(TinyNet(num_classes=4), num_classes=4, device="cpu", image_size=16, seed=0)
    other.fit(
        X, Y, batch_size=8, verbose=0, callbacks=[BackupAndRestore(tmp / "bk", delete_checkpoint=False)]
    )
    ft.fit(X, Y, batch_size=8, verbose=0, callbacks=[BackupAndRestore(tmp / "bk")])


def tiny_loader_drop_last(tmp: Path, ft: FineTuner) -> None:
    ds = TensorDataset(torch.randn(5, 3, 16, 16), torch.zeros(5, dtype=torch.int64))
    ft.fit(DataLoader(ds, batch_size=8, drop_last=True), epochs=1, verbose=0)


CASES: list[tuple[str, Do, type[Exception], tuple[str, ...]]] = [
    # images
    ("rank_2", fit(X[0], Y[:1]), DataError, ("(16, 16, 3)", "x[None]")),
    ("rank_5", fit(X[None], Y), DataError, ("5-D", "batch of images")),
    ("channels_last_float", fit(FLOAT.permute(0, 2, 3, 1).contiguous(), Y), DataError, ("channels-last", "permute")),
    ("wrong_channels_uint8", fit(np.zeros((24, 16, 16, 5), np.uint8), Y), DataError, ("(24, 16, 16, 5)", "C in (1, 3, 4)")),
    ("wrong_channels_float", fit(torch.randn(24, 2, 16, 16), Y), DataError, ("C=in_chans=3", "(24, 2, 16, 16)")),
    ("int32_images", fit(X.astype(np.int32), Y), DataError, ("int32", "astype(np.uint8)")),
    ("int_images_out_of_range", fit(X.astype(np.int64) * 4, Y), DataError, ("int64", "scale them to 0..255")),
    ("object_array", fit(np.array([X[0], X[1][:8]], dtype=object), Y[:2]), DataError, ("object", "np.stack")),
    ("nan_pixels", fit(torch.where(torch.arange(24)[:, None, None, None] == 3, float("nan"), FLOAT), Y), DataError, ("NaN", "finite")),
    ("inf_pixels", fit(FLOAT.clone().index_fill_(0, torch.tensor([1]), float("inf")), Y), DataError, ("infinite", "finite")),
    ("empty_images", fit(np.zeros((0, 16, 16, 3), np.uint8), np.zeros(0, np.int64)), DataError, ("empty", "at least one")),
    ("too_small_for_backbone", too_small_for_backbone, DataError, ("(3, 8, 8)", "too small", "downsamples by 32", "image_size")),
    ("mixed_sizes_dataset", fit(ListDataset([(torch.randn(3, 16, 16), 0), (torch.randn(3, 12, 12), 1), (torch.randn(3, 16, 16), 2)])), DataError, ("different sizes", "(3, 12, 12)")),
    ("list_of_numbers", fit([1, 2], Y[:2]), DataError, ("x[0]", "int", "PIL image")),
    # labels
    ("float_labels", fit(X, Y.astype(np.float32) + 0.5), DataError, ("float32", "astype(int)")),
    ("one_hot_labels", fit(X, np.eye(3)[Y].astype(np.int64)), DataError, ("one-hot", "argmax(1)")),
    ("label_out_of_range", fit(X, np.where(np.arange(24) == 5, 7, Y)), DataError, ("label 7", "num_classes=3", "num_classes=8")),
    ("negative_label", fit(X, np.where(np.arange(24) == 2, -1, Y)), DataError, ("negative label -1", "index 2")),
    ("wrong_label_count", fit(X, Y[:20]), DataError, ("20 labels", "24 images")),
    ("labels_n_by_1", fit(X, Y[:, None]), DataError, ("(24, 1)", "ravel")),
    ("string_labels", fit(X, np.array(["cat"] * 24)), DataError, ("<U3", "LabelEncoder")),
    ("missing_labels", fit(X, None), DataError, ("without labels", "fit(x, y)")),
    ("dataset_label_not_int", fit(ListDataset([(torch.randn(3, 16, 16), "cat")] * 4)), DataError, ("'cat'", "int(label)")),
    # data sets
    ("empty_dataset", fit(ListDataset([])), DataError, ("empty Dataset", "at least one")),
    ("drop_last_no_batch", tiny_loader_drop_last, DataError, ("no batches", "drop_last=True", "smaller batch_size")),
    ("folder_missing", fit("/nonexistent/finetunekit/data"), DataError, ("does not exist", "subfolder per class")),
    ("folders_disagree", disagreeing_folders, DataError, ("'owl'", "'fox'", "same class subfolders")),
    ("only_hidden_folders", only_hidden_folders, DataError, ("no class subfolders", "subfolder per class")),
    ("non_image_files", non_image_folder, DataError, ("no image files", ".png")),
    ("corrupt_image_file", corrupt_folder, DataError, ("broken.jpg", "remove or replace")),
    ("more_folders_than_classes", too_many_class_folders, DataError, ("4 class subfolders", "num_classes=4")),
    ("unsupported_type", fit({"x": X}), DataTypeError, ("dict", "numpy arrays")),
    # configuration
    ("batch_size_zero", fit(X, Y, batch_size=0), ConfigError, ("batch_size=0", ">= 1")),
    ("batch_size_float", fit(X, Y, batch_size=8.0), ConfigError, ("batch_size=8.0", "integer")),
    ("epochs_zero", fit(X, Y, epochs=0), ConfigError, ("epochs=0", ">= 1")),
    ("validation_split_one", fit(X, Y, validation_split=1.0), ConfigError, ("validation_split=1.0", "[0, 1)")),
    ("lr_zero", lambda tmp, ft: ft.compile(lr=0), ConfigError, ("lr=0", "> 0")),
    ("lr_negative", lambda tmp, ft: ft.compile(lr=-1e-3), ConfigError, ("lr=-0.001", "> 0")),
    ("unknown_optimizer", lambda tmp, ft: ft.compile(optimizer="adamax2"), ConfigError, ("adamax2", "adamw")),
    ("unknown_schedule", lambda tmp, ft: ft.compile(schedule="zigzag"), ConfigError, ("zigzag", "one_cycle")),
    ("unknown_metric", lambda tmp, ft: ft.compile(metrics=["f2"]), ConfigError, ("'f2'", "accuracy")),
    ("unknown_nonfinite_policy", lambda tmp, ft: ft.compile(on_nonfinite="ignore"), ConfigError, ("ignore", "skip")),
    ("unknown_backbone", lambda tmp, ft: FineTuner("timm/resnet_does_not_exist", 3, pretrained=False), BackboneNotFoundError, ("resnet_does_not_exist",)),
    ("strategy_wrong_group_count", lambda tmp, ft: tuner(strategy=WrongGroups()), ConfigError, ("planned 2 layer groups", "has 3")),
    ("strategy_not_a_strategy", lambda tmp, ft: tuner(strategy="frozen"), ConfigError, ("'frozen'", "FrozenBackbone()")),
    ("per_group_lrs_wrong_count", lambda tmp, ft: tuner(strategy=DiscriminativeLR(scales=[1.0, 0.5])), ConfigError, ("2 entries", "3 layer groups")),
    ("num_classes_zero", lambda tmp, ft: FineTuner(TinyNet(), num_classes=0), ConfigError, ("num_classes=0", ">= 1")),
    ("num_classes_below_labels", fit(X, (Y + 1) % 4), DataError, ("label 3", "num_classes=3", "num_classes=4")),
    ("negative_base_lr", lambda tmp, ft: setattr(ft.compile(), "base_lr", -1.0), ConfigError, ("base_lr=-1.0", "> 0")),
    ("bad_save_freq", lambda tmp, ft: BackupAndRestore(tmp, save_freq=0), ConfigError, ("save_freq=0", "'epoch'")),
    # checkpoints
    ("truncated_checkpoint", truncated_checkpoint, CheckpointError, ("model.safetensors", "corrupt", "truncated")),
    ("pickle_payload_checkpoint", pickle_payload_checkpoint, CheckpointError, ("model.safetensors", "corrupt")),
    ("pickle_payload_weights", pickle_payload_weights, WeightsMismatchError, ("weights.pth", "weights_only=True")),
    ("missing_checkpoint", lambda tmp, ft: FineTuner.load(tmp / "nothing_here"), CheckpointError, ("nothing_here", "does not exist")),
    ("resume_other_strategy", resume_other_architecture, CheckpointError, ("strategy=", "FrozenBackbone", "FullFineTune")),
    ("resume_other_num_classes", resume_other_num_classes, CheckpointError, ("num_classes=4", "num_classes=3")),
]  # fmt: skip


@pytest.mark.parametrize(("do", "error", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error_before_any_step(
    tmp_path: Path, do: Do, error: type[Exception], words: tuple[str, ...]
) -> None:
    ft = tuner()
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    with pytest.raises(error) as info:
        do(tmp_path, ft)
    assert isinstance(info.value, FineTuneKitError)
    message = str(info.value)
    for word in words:
        assert word in message, f"{word!r} not in: {message}"
    after = ft.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "an optimizer step ran"


def test_there_are_at_least_30_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 30


def test_unnormalized_floats_warn_and_still_train() -> None:
    ft = tuner()
    with pytest.warns(UserWarning, match="looks unnormalized"):
        ft.fit(FLOAT.abs() * 255, Y, batch_size=8, epochs=1, verbose=0)
