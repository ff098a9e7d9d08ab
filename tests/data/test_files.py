"""Data as users hold it: file lists, CSVs and DataFrames, and predict on files, folders, PIL images,
lists of differently sized arrays, IterableDatasets and generators."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import TinyNet, make_images
from PIL import Image

from finetunekit import FineTuner
from finetunekit.callbacks import LambdaCallback
from finetunekit.data import from_csv, from_df
from finetunekit.errors import ConfigError, DataError, DataTypeError

pd = pytest.importorskip("pandas")


def _tuner(**kwargs) -> FineTuner:
    torch.manual_seed(0)
    return FineTuner(TinyNet(num_classes=3), num_classes=3, pretrained=False, image_size=16, device="cpu",
                     seed=0, **kwargs).compile(lr=1e-2)  # fmt: skip


@pytest.fixture
def files(tmp_path):
    x, y = make_images(18, 3)
    paths = []
    for i, img in enumerate(x):
        path = tmp_path / "imgs" / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(img).save(path)
        paths.append(path)
    return x, y, paths


def test_fit_on_a_list_of_paths_with_labels_matches_the_arrays(files):
    x, y, paths = files
    ft = _tuner()
    ft.fit(paths, y, epochs=1, batch_size=6, verbose=0, augment=False)
    from_files = ft.predict([str(p) for p in paths])
    assert np.allclose(from_files, ft.predict(x), atol=1e-5)  # PNG is lossless: the same pixels


def test_from_csv_with_class_names_and_a_valid_column(files, tmp_path):
    _, y, paths = files
    names = np.array(["cat", "dog", "owl"])[y]
    frame = pd.DataFrame({"file": [p.name for p in paths], "animal": names, "is_valid": np.arange(18) >= 12})
    frame.to_csv(tmp_path / "imgs" / "labels.csv", index=False)
    train, valid = from_csv(
        tmp_path / "imgs" / "labels.csv", path_col="file", label_col="animal", valid_col="is_valid"
    )
    assert len(train) == 12 and len(valid) == 6 and train.class_names == ["cat", "dog", "owl"]
    assert train.labels == y[:12].tolist()
    ft = _tuner()
    history = ft.fit(train, validation_data=valid, epochs=1, batch_size=6, verbose=0)
    assert "val_accuracy" in history.history and ft.class_names == ["cat", "dog", "owl"]


def test_from_df_with_a_delimiter_gives_multi_label_targets(files):
    _, _, paths = files
    tags = ["cat dog", "dog", "", "owl cat"] * 4 + ["owl", "cat"]
    frame = pd.DataFrame({"path": [str(p) for p in paths], "tags": tags})
    table = from_df(frame, label_col="tags", delimiter=" ")
    assert table.class_names == ["cat", "dog", "owl"] and table.labels[0] == [0, 1] and table.labels[2] == []
    ft = _tuner(multi_label=True)
    data = ft._prepare(table, None, augment=False, what="x")
    assert data.labels[3].tolist() == [1.0, 0.0, 1.0]
    ft.fit(table, epochs=1, batch_size=6, verbose=0)
    with pytest.raises(DataError, match="multi_label=True"):
        _tuner()._prepare(table, None, augment=False, what="x")


def test_table_errors_name_the_column_and_the_file(files, tmp_path):
    _, y, paths = files
    frame = pd.DataFrame({"path": [str(p) for p in paths], "label": y})
    with pytest.raises(DataError, match="path_col='file'"):
        from_df(frame, path_col="file")
    frame.loc[3, "path"] = str(tmp_path / "missing.png")
    with pytest.raises(DataError, match="missing.png"):
        from_df(frame)
    with pytest.raises(DataTypeError, match="from_df"):
        _tuner().fit(frame, epochs=1, verbose=0)


def test_predict_on_one_file_a_flat_folder_and_paths_in_the_given_order(files):
    x, _, paths = files
    ft = _tuner()
    expected = ft.predict(x)
    assert np.allclose(ft.predict(str(paths[4])), expected[4:5], atol=1e-5)
    rows, names = ft.predict(paths[0].parent, return_paths=True)  # a flat folder, sorted by name
    assert names == [str(p) for p in paths] and np.allclose(rows, expected, atol=1e-5)
    order = [paths[5], paths[1], paths[9]]
    rows, names = ft.predict(order, return_paths=True)
    assert names == [str(p) for p in order] and np.allclose(rows, expected[[5, 1, 9]], atol=1e-5)
    with pytest.raises(DataError, match="return_paths"):
        ft.predict(x, return_paths=True)


def test_predict_on_pil_images_and_arrays_of_different_sizes():
    x, _ = make_images(3, 3, size=16)
    ft = _tuner()
    expected = ft.predict(x)
    assert np.allclose(ft.predict(Image.fromarray(x[1])), expected[1:2], atol=1e-5)
    big = np.kron(x[2], np.ones((2, 2, 1), dtype=np.uint8))  # 32×32: resized to the input size
    rows = ft.predict([x[0], big, Image.fromarray(x[1])])
    assert rows.shape == (3, 3) and np.allclose(rows[0], expected[0], atol=1e-5)
    assert np.allclose(rows[2], expected[1], atol=1e-5)


def test_iterable_datasets_and_generators_are_read_in_order():
    x, y = make_images(10, 3)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(zip(x, y.tolist(), strict=True))

    ft = _tuner()
    expected = ft.predict(x)
    assert np.allclose(ft.predict(Stream(), batch_size=4), expected, atol=1e-5)

    def batches():
        for start in range(0, 10, 3):
            yield x[start : start + 3], y[start : start + 3]

    assert np.allclose(ft.predict(batches, batch_size=4), expected, atol=1e-5)
    assert ft.evaluate(batches())["accuracy"] == pytest.approx(ft.evaluate(x, y)["accuracy"])


def test_fit_on_a_generator_needs_and_honours_steps_per_epoch():
    x, y = make_images(40, 3)

    def batches():  # a generator function: called anew every epoch, endless here
        while True:
            for start in range(0, 40, 8):
                yield x[start : start + 8], y[start : start + 8]

    ft = _tuner()
    with pytest.raises(ConfigError, match="steps_per_epoch"):
        ft.fit(batches, epochs=1, verbose=0)
    before = {k: v.clone() for k, v in ft.model.state_dict().items()}
    seen: list[int] = []
    count = LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(batch))
    history = ft.fit(batches, epochs=2, steps_per_epoch=3, verbose=0, callbacks=[count])
    assert seen == [0, 1, 2, 0, 1, 2]  # an endless stream is cut at steps_per_epoch, every epoch
    assert len(history.history["loss"]) == 2
    assert any(not torch.equal(before[k], v) for k, v in ft.model.state_dict().items())
