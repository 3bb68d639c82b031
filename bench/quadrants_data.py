"""Offline data of the transfer-learning matrix benchmark (bench/quadrants.py), as IDX folders.

Following Yosinski et al. (2014), Fashion-MNIST is split by class into two halves:

* ``source``: classes 0-4 (T-shirt/top, trouser, pullover, dress, coat), to pretrain a backbone;
* ``similar``: classes 5-9 (sandal, shirt, sneaker, bag, ankle boot), the *similar* target: same
  camera, scale and style, classes the source backbone never saw;
* ``different``: scikit-learn's handwritten digits (8x8, 16 grey levels, 10 classes) upscaled to
  28x28, the *different* target.

Every target has fixed train, val and test splits (the test images of Fashion-MNIST come from its
``t10k`` files). The *large* cells train on the whole train split (a thousand images or more),
the *small* cells on ``--shots`` of it; val and test are the same in both.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from tlkit.data.sources import FASHION_MNIST_DIR, load_source

__all__ = ["build_all", "write_idx"]

SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)


def write_idx(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``images`` (N, H, W uint8) and ``labels`` as ``{split}-images/labels-idx*-ubyte``."""
    folder.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    with open(folder / f"{split}-images-idx3-ubyte", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, n, h, w))
        f.write(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    with open(folder / f"{split}-labels-idx1-ubyte", "wb") as f:
        f.write(struct.pack(">II", 0x801, n))
        f.write(np.asarray(labels, dtype=np.uint8).tobytes())


def _per_class(labels: np.ndarray, classes, count: int, rng) -> np.ndarray:
    """Indices of ``count`` random images of every class in ``classes``."""
    picked = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        picked.append(members[:count])
    return np.sort(np.concatenate(picked))


def _remap(labels: np.ndarray, classes) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[int(v)] for v in labels], dtype=np.uint8)


def _fashion() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    src = load_source(str(FASHION_MNIST_DIR))
    train_x = np.stack(src.train.items)
    test_x = np.stack(src.test.items)
    return train_x, np.asarray(src.train.labels), test_x, np.asarray(src.test.labels)


def build_all(
    root: Path,
    source_per_class: int = 1000,
    target_train: int = 200,
    target_val: int = 40,
    target_test: int = 100,
    digits_val: int = 15,
    digits_test: int = 50,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the source and both targets under ``root`` (skipped when already there).

    Returns:
        ``{"source": ..., "similar": ..., "different": ...}`` folder paths.
    """
    paths = {name: root / name for name in ("source", "similar", "different")}
    if all((p / "test-labels-idx1-ubyte").is_file() for p in paths.values()):
        return paths
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = _fashion()

    # Source half: train and val from the Fashion-MNIST training files, test from t10k.
    idx = _per_class(train_y, SOURCE_CLASSES, source_per_class + 100, rng)
    val_mask = np.zeros(len(idx), dtype=bool)
    val_mask[rng.permutation(len(idx))[: 100 * len(SOURCE_CLASSES)]] = True
    for split, ix in (("train", idx[~val_mask]), ("val", idx[val_mask])):
        write_idx(paths["source"], split, train_x[ix], _remap(train_y[ix], SOURCE_CLASSES))
    tidx = _per_class(test_y, SOURCE_CLASSES, 100, rng)
    write_idx(paths["source"], "test", test_x[tidx], _remap(test_y[tidx], SOURCE_CLASSES))

    # Similar target: the other half of the classes.
    order = {c: rng.permutation(np.flatnonzero(train_y == c)) for c in TARGET_CLASSES}
    tr = np.sort(np.concatenate([order[c][:target_train] for c in TARGET_CLASSES]))
    va = np.sort(
        np.concatenate([order[c][target_train : target_train + target_val] for c in TARGET_CLASSES])
    )
    te = _per_class(test_y, TARGET_CLASSES, target_test, rng)
    for split, ix, xs, ys in (("train", tr, train_x, train_y), ("val", va, train_x, train_y),
                              ("test", te, test_x, test_y)):  # fmt: skip
        write_idx(paths["similar"], split, xs[ix], _remap(ys[ix], TARGET_CLASSES))

    # Different target: scikit-learn digits, 8x8 x 16 levels -> 28x28 x 256 levels.
    from sklearn.datasets import load_digits

    digits = load_digits()
    small = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((28, 28), Image.BILINEAR)) for im in small]
    )
    labels = digits.target.astype(np.uint8)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        parts["test"].append(members[:digits_test])
        parts["val"].append(members[digits_test : digits_test + digits_val])
        parts["train"].append(members[digits_test + digits_val :])
    for split, chunks in parts.items():
        ix = np.sort(np.concatenate(chunks))
        write_idx(paths["different"], split, big[ix], labels[ix])
    return paths
