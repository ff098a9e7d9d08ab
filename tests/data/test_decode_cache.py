"""The decode cache: files decode once to a reduced size, the same pixels cached or not, shared by
workers, in memory or in a file, re-read when a file changes."""

from __future__ import annotations

import gc
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from finetunekit.backbones.base import DataConfig
from finetunekit.data import PreparedData, decode_cache, make_loader, pixel_store
from finetunekit.data.datasets import FolderDataset
from finetunekit.data.transforms import ImageTransform
from finetunekit.errors import ConfigError, DataError

CFG = DataConfig(input_size=(3, 16, 16), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5))


@pytest.fixture(autouse=True)
def _fresh_settings(tmp_path):
    """Each test gets its own cache folder and the default budget back afterwards."""
    old = decode_cache.configure(folder=tmp_path / "cache")
    yield
    decode_cache.configure(memory_budget=old.memory_budget, folder=old.folder, enabled=old.enabled)
    gc.collect()


def photo(seed: int, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A smooth colour gradient with noise: compresses like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h) + 60 * seed % 255], axis=-1)
    return (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)


def write_files(root: Path, n: int = 6, suffix: str = ".jpg", size: tuple[int, int] = (96, 72)) -> list[Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        path = root / f"{i}{suffix}"
        Image.fromarray(photo(i, size)).save(path, quality=90)
        files.append(path)
    return files


def dataset(files: list[Path], augment: bool) -> FolderDataset:
    return FolderDataset(files, np.arange(len(files)) % 2, ImageTransform(CFG, 3, augment))


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_cached_pixels_equal_a_fresh_decode_at_the_reduced_size(tmp_path, suffix):
    files = write_files(tmp_path / "img", suffix=suffix)
    train = dataset(files, augment=True)
    first = [train.images[i] for i in range(len(files))]
    assert train.images.store is not None and train.images.store.filled_count() == len(files)
    again = [train.images[i] for i in range(len(files))]
    fresh = [decode_cache.decode_image(f, train.images.target) for f in files]
    for a, b, c in zip(first, again, fresh, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b) and torch.equal(a, c)
    # augmenting: a short side from 28 (16 px / sqrt(0.35)) to 32 (2x), aspect kept: 96x72 -> 48x36
    # (JPEG draft at 1/2, PNG reduce(2)) -> resized to 43x32
    assert tuple(first[0].shape) == (3, 32, 43)
    val = train.with_transform(train.transform.with_augment(False))
    assert tuple(val.images[0].shape) == (3, 16, 16)  # not augmenting: exactly the training size
    assert train.images[0].shape[1] == 32  # the twin has its own cache


def test_reduced_decode_is_close_to_a_full_decode_then_resize(tmp_path):
    from PIL import Image

    files = write_files(tmp_path, n=1, size=(640, 480))
    target = decode_cache.DecodeTarget(3, short_side=32, min_side=28, exact=None, resample="bilinear")
    reduced = decode_cache.decode_image(files[0], target).float()
    # JPEG draft at 1/8 (80x60), then reduce(2): 40x30, between min_side and short_side, so kept
    assert tuple(reduced.shape) == (3, 30, 40)
    with Image.open(files[0]) as image:
        full = np.asarray(image.convert("RGB").resize((40, 30), Image.Resampling.BOX))
    reference = torch.from_numpy(full.copy()).permute(2, 0, 1).float()
    assert reduced.shape == reference.shape
    assert (reduced - reference).abs().mean() < 4.0  # of 255: the same picture


def test_exif_orientation_is_applied_and_planned(tmp_path):
    from PIL import Image

    path = tmp_path / "sideways.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees when shown
    Image.fromarray(photo(0, (80, 40))).save(path, exif=exif.tobytes())
    train = dataset([path], augment=True)
    image = train.images[0]
    assert tuple(image.shape) == (3, 64, 32)  # shown upright: taller than wide, short side 32
    assert tuple(train.images.store.shapes[0]) == (64, 32)


def test_workers_fill_one_shared_cache_and_later_epochs_read_it(tmp_path):
    files = write_files(tmp_path, n=8)
    data = dataset(files, augment=False)
    prepared = PreparedData(data, None, data.labels.numpy(), None, len(files))
    loader = make_loader(prepared, batch_size=4, shuffle=True, seed=0, num_workers=2)
    assert not loader.persistent_workers  # each epoch's workers get the dataset with that epoch set
    first = torch.cat([x for x, _ in loader])
    assert data.images.store.filled_count() == 8  # written by the workers, visible here
    second = torch.cat([x for x, _ in loader])
    assert first.shape == second.shape == (8, 3, 16, 16)
    in_process = make_loader(prepared, batch_size=4, shuffle=True, seed=0, num_workers=0)
    torch.testing.assert_close(torch.cat([x for x, _ in in_process]), first, rtol=0, atol=0)


def test_workers_augment_differently_each_epoch_and_reproducibly(tmp_path):
    files = write_files(tmp_path, n=4)

    def two_epochs() -> list[torch.Tensor]:
        data = dataset(files, augment=True)
        prepared = PreparedData(data, None, data.labels.numpy(), None, len(files))
        loader = make_loader(prepared, batch_size=2, shuffle=False, seed=3, num_workers=2)
        epochs = []
        for epoch in range(2):
            loader.dataset.set_epoch(epoch)  # as fit does: augmentation is seeded by (seed, epoch, index)
            epochs.append(torch.cat([x for x, _ in loader]))
        return epochs

    first = two_epochs()
    assert not torch.equal(first[0], first[1])  # new crops every epoch, from the same cached pixels
    again = two_epochs()
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def _drop_live_stores() -> None:
    gc.collect()
    assert not list(pixel_store._live.values())


def test_over_the_memory_budget_a_file_cache_is_reused_and_a_changed_file_is_reread(tmp_path):
    from PIL import Image

    folder = tmp_path / "cache"
    decode_cache.configure(memory_budget=0)
    files = write_files(tmp_path / "img", n=3)
    data = dataset(files, augment=True)
    before = [data.images[i] for i in range(3)]
    assert data.images.store.path is not None and data.images.store.path.parent == folder
    del data
    _drop_live_stores()
    reopened = dataset(files, augment=True)  # a later run: the file's entries are still valid
    assert reopened.images.store.filled_count() == 3
    assert all(torch.equal(reopened.images.store.get(i), before[i]) for i in range(3))
    del reopened
    _drop_live_stores()
    Image.fromarray(255 - photo(1)).save(files[1], quality=90)  # same size and shape, new pixels
    os.utime(files[1], ns=(1, 1))
    changed = dataset(files, augment=True)
    assert changed.images.store.filled_count() == 2  # only the changed file is decoded again
    assert torch.equal(changed.images[0], before[0])
    assert torch.equal(changed.images[1], decode_cache.decode_image(files[1], changed.images.target))
    assert not torch.equal(changed.images[1], before[1])


def test_memory_cache_is_shared_in_process_and_rereads_a_changed_file(tmp_path):
    from PIL import Image

    files = write_files(tmp_path, n=2)
    first = dataset(files, augment=True)
    old = first.images[0]
    Image.fromarray(255 - photo(0)).save(files[0], quality=90)
    os.utime(files[0], ns=(2, 2))
    second = dataset(files, augment=True)
    assert second.images.store is first.images.store  # one decoded set per process
    assert not torch.equal(second.images[0], old)


def test_disabled_cache_decodes_every_time_to_the_same_pixels(tmp_path):
    files = write_files(tmp_path, n=2)
    cached = dataset(files, augment=True)
    decode_cache.configure(enabled=False)
    uncached = dataset(files, augment=True)
    assert uncached.images.store is None
    assert all(torch.equal(cached.images[i], uncached.images[i]) for i in range(2))


def test_stores_cross_into_spawned_processes_by_file_or_detached(tmp_path):
    files = write_files(tmp_path, n=2)
    memory = dataset(files, augment=True)
    memory.images[0]
    copied = pickle.loads(pickle.dumps(memory))  # what a spawned worker gets
    assert copied.images.store.get(0) is None  # detached: decodes on access, same pixels
    assert torch.equal(copied.images[0], memory.images[0])
    decode_cache.configure(memory_budget=0)
    on_disk = dataset(files, augment=False)
    on_disk.images[1]
    reopened = pickle.loads(pickle.dumps(on_disk))
    assert torch.equal(reopened.images.store.get(1), on_disk.images[1])


def test_bad_settings_and_bad_files_name_the_value(tmp_path):
    with pytest.raises(ConfigError, match=r"memory_budget=-1.*bytes"):
        decode_cache.configure(memory_budget=-1)
    with pytest.raises(ConfigError, match=r"enabled='yes'"):
        decode_cache.configure(enabled="yes")  # type: ignore[arg-type]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg"):
        dataset([broken], augment=True)
    decode_cache.configure(memory_budget=0, folder=tmp_path / "file-not-folder")
    (tmp_path / "file-not-folder").write_text("x")
    with pytest.raises(ConfigError, match=r"file-not-folder.*configure\(folder="):
        dataset(write_files(tmp_path / "img", n=1), augment=True)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
@pytest.mark.parametrize("size", [(640, 480), (1600, 1200), (30, 20), (333, 101)])
def test_the_planned_layout_is_what_decoding_gives(tmp_path, suffix, size):
    files = write_files(tmp_path, n=1, suffix=suffix, size=size)
    for augment in (True, False):
        target = decode_cache.DecodeTarget.for_transform(ImageTransform(CFG, 3, augment))
        planned = tuple(decode_cache.planned_shapes(files, target)[0])
        decoded = decode_cache.decode_image(files[0], target)
        assert (3, *planned) == tuple(decoded.shape)
        if augment:  # enough pixels for the smallest crop, never more than twice the training size
            assert target.min_side <= min(planned) <= target.short_side or min(planned) == min(size)
