"""Real-image few-shot tasks for benchmarks/recipes.py, all built offline from images that ship in wheels.

Every task returns uint8 RGB images N x S x S x 3 (``S`` = the model's image size) for a train split of
``per_class`` images per class drawn with ``seed`` and a test split (fixed for texture and rotation; for
digits, all the images not drawn for training), so every method gets exactly the same pixels.

- ``digits`` (the TUNING task: library defaults were chosen on it): scikit-learn's 8x8 digits, upsampled
  bilinearly, gray repeated to 3 channels; train = ``per_class`` random images per class, test = all the
  others (about 800 at 100/class, 1,700 at 10/class).
- ``faces`` (TUNING, with digits: the few-shot recipe was chosen on both): scikit-image's ``lfw_subset``,
  100 real face photos and 100 real non-face photo patches (25 x 25 gray), face or not; 50 fixed test
  images per class, train = ``per_class`` (at most 50) random images per class from the others.
- ``texture`` (held-out): 10 real photos from scikit-image (brick, grass, gravel, camera, moon, coins,
  astronaut, coffee, chelsea, rocket), converted to grayscale; class = source photo. Each sample is a small
  random crop (``TEXTURE_CROP`` px of the full-resolution photo, so it shows a texture, not an object),
  resized to S. Train crops lie entirely in the left 70% of the photo, test crops entirely in the right
  30%: no pixel is shared. Test: 60 crops per class.
- ``patches`` (held-out): the same construction on 10 other images, in colour, with 24 px crops:
  scikit-learn's china and flower, scikit-image's hubble_deep_field, retina, ihc, motorcycle_left, cell,
  clock, page, text.
  Some crops are ambiguous on purpose (black sky in hubble and black borders in retina, blank paper in page
  and text), so the ceiling is below 1.
- ``rotation`` (held-out): predict how a patch of a natural photo was rotated (0, 90, 180, 270 degrees).
  Patches are random ``ROTATION_CROP`` px colour crops of photos downscaled 2x; train patches come from
  astronaut, camera, chelsea, coffee, rocket, motorcycle_left, test patches from other photos
  (scikit-learn's china and flower, scikit-image's clock): different scenes, no shared pixels. Each class
  gets the same number of patches. Test: 150 per class.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

TEXTURE_PHOTOS = ("brick", "grass", "gravel", "camera", "moon", "coins", "astronaut", "coffee", "chelsea",
                  "rocket")  # fmt: skip
TEXTURE_CROP = 20
TEXTURE_TEST_PER_CLASS = 60
PATCH_PHOTOS = ("sk:china", "sk:flower", "hubble_deep_field", "retina", "ihc.png", "motorcycle_left.png",
                "cell", "clock", "page", "text")  # fmt: skip
PATCH_CROP = 24
ROTATION_TRAIN = ("astronaut", "camera", "chelsea", "coffee", "rocket", "motorcycle_left.png")
ROTATION_TEST = ("sk:china", "sk:flower", "clock")
ROTATION_CROP = 48
ROTATION_TEST_PER_CLASS = 150
TEST_SEED = 12345
FACES_TEST_SEED = 54321
TASKS = ("digits", "faces", "texture", "patches", "rotation")
MAX_PER_CLASS = {"faces": 50}  # the others draw as many as asked
NUM_CLASSES = {"digits": 10, "faces": 2, "texture": 10, "patches": 10, "rotation": 4}


def _photo(name: str) -> np.ndarray:
    """uint8 H x W x 3 photo from scikit-image's bundled data (or scikit-learn's, ``sk:`` prefix)."""
    if name.startswith("sk:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name[3:] + ".jpg")
    elif name.endswith(".png"):
        import skimage.data
        import skimage.io

        img = skimage.io.imread(os.path.join(os.path.dirname(skimage.data.__file__), name))
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _gray(img: np.ndarray) -> np.ndarray:
    g = np.round(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    return np.repeat(np.clip(g, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def _resize(batch: np.ndarray, size: int) -> np.ndarray:
    """uint8 N x h x w x 3 -> uint8 N x size x size x 3 (bilinear, antialiased when shrinking)."""
    t = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def _crops(img: np.ndarray, n: int, crop: int, x0: int, x1: int, rng: np.random.Generator) -> np.ndarray:
    """n random crop x crop windows lying entirely in columns [x0, x1) of img."""
    h = img.shape[0]
    ys = rng.integers(0, h - crop + 1, n)
    xs = rng.integers(x0, x1 - crop + 1, n)
    return np.stack([img[y : y + crop, x : x + crop] for y, x in zip(ys, xs, strict=True)])


def digits(per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images / 16.0 * 255).astype(np.uint8)
    labels = d.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    train = np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(10)])
    test = np.setdiff1d(np.arange(len(labels)), train)
    rgb = np.repeat(images[:, :, :, None], 3, axis=3)
    return _resize(rgb[train], size), labels[train], _resize(rgb[test], size), labels[test]


def faces(per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    """scikit-image's lfw_subset: 100 real face photos and 100 real non-face photo patches, 25 x 25 gray.
    Test: 50 fixed images per class; train: ``per_class`` random images per class from the other 50."""
    import skimage.data

    if per_class > MAX_PER_CLASS["faces"]:
        raise ValueError(f"faces has {MAX_PER_CLASS['faces']} training images per class, not {per_class}")
    images = np.round(skimage.data.lfw_subset() * 255).clip(0, 255).astype(np.uint8)
    labels = np.repeat(np.arange(2), 100)
    test_rng, rng = np.random.default_rng(FACES_TEST_SEED), np.random.default_rng(seed)
    test, train = [], []
    for c in range(2):
        order = test_rng.permutation(np.flatnonzero(labels == c))
        test.append(order[:50])
        train.append(rng.permutation(order[50:])[:per_class])
    tr, te = np.concatenate(train), np.concatenate(test)
    rgb = np.repeat(images[:, :, :, None], 3, axis=3)
    return _resize(rgb[tr], size), labels[tr], _resize(rgb[te], size), labels[te]


def texture(per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    return _photo_crops(TEXTURE_PHOTOS, True, TEXTURE_CROP, per_class, seed, size)


def patches(per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    return _photo_crops(PATCH_PHOTOS, False, PATCH_CROP, per_class, seed, size)


def _photo_crops(photos: tuple[str, ...], gray: bool, crop: int, per_class: int, seed: int,
                 size: int) -> tuple[np.ndarray, ...]:  # fmt: skip
    """class = source photo; train crops from the left 70% of each photo, test crops from the right 30%."""
    rng, test_rng = np.random.default_rng(seed), np.random.default_rng(TEST_SEED)
    xs, ys, xts, yts = [], [], [], []
    for c, name in enumerate(photos):
        img = _gray(_photo(name)) if gray else _photo(name)
        cut = int(img.shape[1] * 0.7)
        xs.append(_crops(img, per_class, crop, 0, cut, rng))
        xts.append(_crops(img, TEXTURE_TEST_PER_CLASS, crop, cut, img.shape[1], test_rng))
        ys += [c] * per_class
        yts += [c] * TEXTURE_TEST_PER_CLASS
    return (_resize(np.concatenate(xs), size), np.array(ys), _resize(np.concatenate(xts), size),
            np.array(yts))  # fmt: skip


def _rotated_patches(
    photos: tuple[str, ...], per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    imgs = [_photo(n)[::2, ::2] for n in photos]
    which = rng.integers(0, len(imgs), 4 * per_class)
    patches = np.stack([_crops(imgs[i], 1, ROTATION_CROP, 0, imgs[i].shape[1], rng)[0] for i in which])
    labels = np.repeat(np.arange(4), per_class)
    out = np.stack([np.rot90(p, k=int(k)) for p, k in zip(patches, labels, strict=True)])
    return np.ascontiguousarray(out), labels


def rotation(per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    x, y = _rotated_patches(ROTATION_TRAIN, per_class, np.random.default_rng(seed))
    xt, yt = _rotated_patches(ROTATION_TEST, ROTATION_TEST_PER_CLASS, np.random.default_rng(TEST_SEED))
    order = np.random.default_rng(seed).permutation(len(y))
    return _resize(x[order], size), y[order], _resize(xt, size), yt


def load(task: str, per_class: int, seed: int, size: int) -> tuple[np.ndarray, ...]:
    tasks = {"digits": digits, "faces": faces, "texture": texture, "patches": patches, "rotation": rotation}
    return tasks[task](per_class, seed, size)
