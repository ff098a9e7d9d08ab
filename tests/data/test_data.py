"""finetunekit.data: every accepted input form becomes (normalized float32 N×C×H×W, int64 labels)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from finetunekit.backbones.base import DataConfig
from finetunekit.data import PreparedData, make_loader, prepare_data, split_validation
from finetunekit.errors import DataError, DataTypeError

CFG = DataConfig(input_size=(3, 16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))
MEAN = torch.tensor(CFG.mean).view(3, 1, 1)
STD = torch.tensor(CFG.std).view(3, 1, 1)


def prep(x, y=None, *, augment=False, require_labels=False, num_classes=None, in_chans=3, what="x"):
    return prepare_data(
        x, y, data_config=CFG, in_chans=in_chans, augment=augment,
        require_labels=require_labels, num_classes=num_classes, what=what,
    )  # fmt: skip


def batches(data: PreparedData, batch_size=8, shuffle=False, seed=0):
    return list(make_loader(data, batch_size=batch_size, shuffle=shuffle, seed=seed))


def all_images(data: PreparedData, **kwargs) -> torch.Tensor:
    return torch.cat([b[0] for b in batches(data, **kwargs)])


def white_expected(in_chans: int = 3) -> torch.Tensor:
    return ((1 - MEAN) / STD).expand(in_chans, 16, 16)


# ------------------------------------------------------------------------------------ arrays
@pytest.mark.parametrize("shape", [(4, 10, 12, 3), (4, 10, 12)], ids=["NHWC", "NHW"])
def test_uint8_arrays_become_normalized_batches_of_target_size(shape):
    x = np.full(shape, 255, dtype=np.uint8)
    data = prep(x, np.arange(4))
    images, labels = batches(data)[0]
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(images, white_expected().expand(4, 3, 16, 16))
    assert data.num_samples == 4 and data.labels is not None and data.labels.dtype == np.int64


def test_uint8_tensor_values_are_scaled_and_normalized_per_channel():
    x = torch.zeros(2, 16, 16, 3, dtype=torch.uint8)
    x[..., 0] = 51  # 0.2
    images = all_images(prep(x))
    expected = (torch.tensor([0.2, 0.0, 0.0]).view(3, 1, 1) - MEAN) / STD
    torch.testing.assert_close(images, expected.expand(2, 3, 16, 16))


def test_grayscale_is_repeated_to_three_channels_and_said_once(caplog):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (3, 16, 16), dtype=np.uint8)
    with caplog.at_level(logging.INFO, logger="finetunekit"):
        images = all_images(prep(x))
    gray = torch.from_numpy(x).float().div(255)[:, None]
    torch.testing.assert_close(images, (gray - MEAN) / STD)
    assert sum("grayscale" in r.message for r in caplog.records) == 1


def test_rgb_becomes_luminance_for_one_channel_models():
    x = np.zeros((2, 16, 16, 3), dtype=np.uint8)
    x[..., 1] = 255
    images = all_images(prep(x, in_chans=1))
    assert images.shape == (2, 1, 16, 16)
    expected = (round(0.587 * 255) / 255 - MEAN.mean()) / STD.mean()
    torch.testing.assert_close(images, torch.full_like(images, float(expected)))


def test_four_channels_for_rgb_model_is_an_error_with_a_fix():
    with pytest.raises(DataError, match=r"4-channel.*in_chans=3.*x\[\.\.\., :3\]"):
        prep(np.zeros((2, 8, 8, 4), dtype=np.uint8))


def test_float_nchw_passes_unchanged_bitwise():
    x = torch.randn(5, 3, 9, 7)
    data = prep(x, torch.arange(5))
    images = all_images(data)
    assert torch.equal(images, x)


def test_float_channels_last_error_suggests_permute():
    with pytest.raises(DataError, match=r"\(2, 8, 8, 3\).*permute\(0, 3, 1, 2\)"):
        prep(np.zeros((2, 8, 8, 3), dtype=np.float32))


def test_float_non_finite_is_an_error():
    x = torch.zeros(2, 3, 4, 4)
    x[1, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="1 NaN or infinite"):
        prep(x)


def test_float_that_looks_unnormalized_warns_once():
    with pytest.warns(UserWarning, match="unnormalized") as record:
        prep(np.full((2, 3, 4, 4), 200.0, dtype=np.float64))
    assert len([w for w in record if "unnormalized" in str(w.message)]) == 1


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((4, 8), dtype=np.uint8), r"\(4, 8\) \(2-D\).*batch of images"),
        (np.zeros((1, 2, 8, 8, 3), dtype=np.uint8), r"5-D"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), r"empty"),
        (np.full((2, 8, 8, 3), 7, dtype=np.int32), r"int32 with values 7..7.*astype\(np.uint8\)"),
        (np.zeros((2, 8, 8, 5), dtype=np.uint8), r"N×H×W×C with C in \(1, 3, 4\)"),
    ],
    ids=["2d", "5d", "empty", "int32", "5-channels"],
)
def test_bad_image_arrays_are_clear_errors(x, match):
    with pytest.raises(DataError, match=match):
        prep(x)


def test_unknown_type_lists_accepted_types():
    with pytest.raises(DataTypeError, match=r"builtins.dict.*uint8.*DataLoader.*folder"):
        prep({"images": 1})


# ------------------------------------------------------------------------------------ labels
X4 = np.zeros((4, 8, 8, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("y", "num_classes", "match"),
    [
        (np.arange(3), None, r"3 labels but x has 4 images"),
        (np.arange(4).reshape(4, 1), None, r"shape \(4, 1\).*y\.ravel\(\)"),
        (np.eye(4), None, r"shape \(4, 4\).*one-hot.*y\.argmax\(1\)"),
        (np.arange(4, dtype=np.float32), None, r"dtype float32.*y\.astype\(int\)"),
        ([0, -1, 2, 3], None, r"negative label -1 \(at index 1\)"),
        ([0, 1, 7, 3], 5, r"label 7 \(at index 2\).*num_classes=5.*num_classes=8"),
        (["cat", "dog", "cat", "dog"], None, r"dtype <U3.*LabelEncoder"),
    ],
    ids=["length", "column", "one-hot", "float", "negative", "too-large", "strings"],
)
def test_label_errors_name_value_and_fix(y, num_classes, match):
    with pytest.raises(DataError, match=match):
        prep(X4, y, num_classes=num_classes)


def test_label_errors_for_validation_data_name_it():
    with pytest.raises(DataError, match="labels of validation_data has 2 labels but validation_data has 4"):
        prep(X4, [0, 1], what="validation_data")


def test_labels_accept_lists_tensors_and_tuples_of_x_y():
    assert prep(X4, [0, 1, 1, 0]).labels.tolist() == [0, 1, 1, 0]
    assert prep(X4, torch.tensor([3, 2, 1, 0])).labels.tolist() == [3, 2, 1, 0]
    assert prep((X4, np.array([1, 1, 0, 0]))).labels.tolist() == [1, 1, 0, 0]


def test_require_labels_without_y_is_an_error():
    with pytest.raises(DataError, match=r"without labels.*y"):
        prep(X4, require_labels=True)


def test_predict_without_labels_yields_minus_one():
    images, labels = batches(prep(X4))[0]
    assert images.shape == (4, 3, 16, 16)
    assert labels.dtype == torch.int64 and labels.tolist() == [-1] * 4


def test_y_with_dataset_or_loader_is_an_error():
    ds = TensorDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(DataError, match=r"carries its own labels.*y=None"):
        prep(ds, [0, 1])
    with pytest.raises(DataError, match="carries its own labels"):
        prep(DataLoader(ds), [0, 1])


# ------------------------------------------------------------------------------------ split
def labelled(n_per_class=(30, 10, 20), augment=False):
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (len(y), 12, 12, 3), dtype=np.uint8)
    return prep(x, y, augment=augment, require_labels=True)


def test_stratified_split_keeps_proportions_is_disjoint_covering_and_seeded():
    data = labelled()
    train, val = split_validation(data, 0.2, seed=3)
    assert np.bincount(val.labels).tolist() == [6, 2, 4]
    assert np.bincount(train.labels).tolist() == [24, 8, 16]
    t_idx, v_idx = set(train.dataset.indices), set(val.dataset.indices)
    assert not t_idx & v_idx and t_idx | v_idx == set(range(60))
    again = split_validation(data, 0.2, seed=3)[1]
    other = split_validation(data, 0.2, seed=4)[1]
    assert again.dataset.indices == val.dataset.indices
    assert other.dataset.indices != val.dataset.indices
    assert train.num_samples == 48 and val.num_samples == 12


def test_split_labels_match_the_images():
    x = np.arange(20, dtype=np.uint8)[:, None, None].repeat(16, 1).repeat(16, 2)  # image i is all i
    y = np.arange(20) % 3
    train, val = split_validation(prep(x, y), 0.25, seed=0)
    for part in (train, val):
        images, labels = batches(part, batch_size=100)[0]
        ids = (images[:, 0, 0, 0] * STD[0, 0, 0] + MEAN[0, 0, 0]).mul(255).round().long()
        assert labels.tolist() == (ids % 3).tolist() == part.labels.tolist()


def test_split_never_takes_the_last_sample_of_a_class():
    train, _ = split_validation(labelled((20, 1, 2)), 0.5, seed=0)
    assert set(train.labels.tolist()) == {0, 1, 2}


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_split_fraction_out_of_range(fraction):
    with pytest.raises(DataError, match=rf"validation_split={fraction}.*between 0 and 1"):
        split_validation(labelled(), fraction, seed=0)


def test_split_of_a_dataloader_is_an_error():
    loader_data = prep(DataLoader(TensorDataset(torch.zeros(4, 3, 4, 4), torch.zeros(4, dtype=torch.int64))))
    with pytest.raises(DataError, match=r"DataLoader.*validation_data"):
        split_validation(loader_data, 0.2, seed=0)


def test_validation_part_never_augments_and_train_augments_reproducibly():
    data = labelled(augment=True)
    train, val = split_validation(data, 0.2, seed=0)
    assert torch.equal(all_images(val), all_images(val))
    torch.manual_seed(0)
    loader = make_loader(train, batch_size=16, shuffle=True, seed=0)

    def epoch(e: int) -> torch.Tensor:
        loader.sampler.set_epoch(e)  # type: ignore[union-attr]  # what fit does before each epoch
        loader.dataset.set_epoch(e)  # type: ignore[attr-defined]  # per-sample augmentation seeds
        return torch.cat([b[0] for b in loader])

    epoch1, epoch2 = epoch(0), epoch(1)
    assert not torch.equal(epoch1, epoch2)
    torch.manual_seed(0)
    replay = torch.cat([b[0] for b in make_loader(train, batch_size=16, shuffle=True, seed=0)])
    assert torch.equal(epoch1, replay)
    assert epoch1.shape == (48, 3, 16, 16)


def test_validation_of_augmented_arrays_equals_plain_preprocessing():
    x = np.random.default_rng(0).integers(0, 256, (10, 12, 12, 3), dtype=np.uint8)
    y = np.arange(10)  # one sample per label: the labels say which images went to validation
    _, val = split_validation(prep(x, y, augment=True), 0.4, seed=0)
    assert torch.equal(all_images(val), all_images(prep(x[val.labels], val.labels)))


def test_shuffling_is_seeded():
    data = labelled()
    order = lambda seed: torch.cat([b[1] for b in make_loader(data, batch_size=7, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(1), order(1)) and not torch.equal(order(1), order(2))


# ------------------------------------------------------------------------------------ datasets
class PILDataset(Dataset):
    def __init__(self, n: int, mode: str = "RGB"):
        from PIL import Image

        white = 255 if mode == "L" else (255,) * len(mode)
        self.items = [(Image.new(mode, (10, 14), color=white), i % 2) for i in range(n)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_dataset_of_pil_images_is_preprocessed_lazily():
    data = prep(PILDataset(5), require_labels=True)
    assert data.labels is None and data.num_samples == 5
    images, labels = batches(data)[0]
    torch.testing.assert_close(images, white_expected().expand(5, 3, 16, 16))
    assert labels.tolist() == [0, 1, 0, 1, 0]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P"])
def test_pil_modes_become_rgb(mode):
    images = all_images(prep(PILDataset(2, mode)))
    assert images.shape == (2, 3, 16, 16)


def test_dataset_with_targets_exposes_labels_and_classes():
    ds = TensorDataset(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    ds.targets = [0, 1, 0, 1]
    ds.classes = ["a", "b"]
    data = prep(ds)
    assert data.labels.tolist() == [0, 1, 0, 1] and data.class_names == ["a", "b"]
    _, val = split_validation(data, 0.5, seed=0)
    assert sorted(val.labels.tolist()) == [0, 1]


def test_dataset_item_errors_are_early_and_named():
    bad = TensorDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0.5, 1.0]))
    with pytest.raises(DataError, match=r"x\[0\] has label 0.5"):
        prep(bad)
    with pytest.raises(DataError, match=r"label 3.*num_classes=2"):
        batches(prep(TensorDataset(torch.zeros(2, 3, 4, 4), torch.tensor([0, 3])), num_classes=2))


def test_dataset_of_float_tensors_is_taken_as_preprocessed():
    x = torch.randn(3, 3, 5, 5)
    data = prep(TensorDataset(x, torch.tensor([0, 1, 2])))
    assert torch.equal(all_images(data), x)


def test_dataloader_passes_through_untouched():
    loader = DataLoader(
        TensorDataset(torch.zeros(6, 3, 4, 4), torch.zeros(6, dtype=torch.int64)), batch_size=4
    )
    data = prep(loader, require_labels=True)
    assert data.loader is loader and data.dataset is None and data.labels is None and data.num_samples == 6
    assert make_loader(data, batch_size=99, shuffle=True, seed=0) is loader


# ------------------------------------------------------------------------------------ folders
def write_images(root: Path, layout: dict[str, int]) -> None:
    from PIL import Image

    for name, count in layout.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (12, 9), color=(255, 255, 255)).save(root / name / f"{i}.png")


def test_folder_of_class_subfolders(tmp_path):
    write_images(tmp_path, {"dog": 2, "cat": 3})
    (tmp_path / ".ipynb_checkpoints").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    data = prep(str(tmp_path), require_labels=True)
    assert data.class_names == ["cat", "dog"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.num_samples == 5
    images, labels = batches(data)[0]
    torch.testing.assert_close(images, white_expected().expand(5, 3, 16, 16))
    assert labels.tolist() == [0, 0, 0, 1, 1]
    train, val = split_validation(prep(tmp_path, augment=True), 0.4, seed=0)
    assert sorted(val.labels.tolist()) == [0, 1] and all_images(train).shape == (3, 3, 16, 16)


def test_empty_folder_and_folder_without_classes_name_the_path(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path.name}.*no class subfolders"):
        prep(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DataError, match=rf"{tmp_path.name}.*no image files"):
        prep(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        prep(tmp_path / "missing")


def test_folder_with_more_classes_than_num_classes(tmp_path):
    write_images(tmp_path, {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError, match=r"3 class subfolders.*num_classes=2"):
        prep(tmp_path, num_classes=2)


def test_no_warnings_for_clean_uint8_input():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batches(prep(X4, [0, 1, 2, 3]))
