"""The IDX reader (MNIST's format): ``train-images-idx3-ubyte[.gz]`` and friends in a folder.

Images are read into ``uint8`` arrays; Fashion-MNIST's folder gets its class names.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from pathlib import Path

import numpy as np

from tlkit.data.splits import DataSource, Split, one_line
from tlkit.errors import TlkitError

__all__ = ["FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR", "find_idx_files", "load_idx_dir"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` installs the IDX files."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
"""Fashion-MNIST class names in label order (0-9), filesystem-safe."""

_IDX_NAME = re.compile(
    r"^(?P<split>train|t10k|test|val)-(?P<kind>images|labels)[.-]idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test", "val": "val"}


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """Map ``(split, kind)`` to the IDX file in ``folder``; uncompressed wins over ``.gz``."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return {}
    out: dict[tuple[str, str], Path] = {}
    for name in names:
        m = _IDX_NAME.match(name)
        if m is None:
            continue
        key = (_IDX_SPLITS[m["split"].lower()], m["kind"].lower())
        if key in out and m["gz"]:
            continue
        out[key] = folder / name
    return out


_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped), checking its size against the header."""
    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as err:
        raise TlkitError(
            f"cannot read IDX file '{path}' ({one_line(err)}); re-download or re-extract it"
        ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise TlkitError(f"'{path}' is not an IDX file (bad magic number); replace it")
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise TlkitError(f"IDX file '{path}' is truncated inside its header; re-download it")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "longer than its header says"
        raise TlkitError(
            f"IDX file '{path}' is {what}: header {shape} needs {expected} data bytes but "
            f"{actual} are present; re-download or re-extract it"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def _read_arrays(
    folder: Path, files: dict[tuple[str, str], Path]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``split -> (images, labels)`` for every split with IDX files, checked for consistency."""
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        img_path = files.get((split, "images"))
        lbl_path = files.get((split, "labels"))
        if img_path is None and lbl_path is None:
            continue
        if img_path is None or lbl_path is None:
            have, missing = (img_path, "labels") if lbl_path is None else (lbl_path, "images")
            raise TlkitError(
                f"IDX folder '{folder}' has {have.name} but no matching {split} {missing} "
                "file; add it or remove the other"
            )
        images = _read_idx(img_path)
        labels = _read_idx(lbl_path)
        if images.dtype != np.uint8 or images.ndim not in (3, 4):
            raise TlkitError(
                f"IDX images '{img_path}' must be uint8 with shape N x H x W [x C] "
                f"(got {images.dtype}, {images.shape}); convert the file"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise TlkitError(
                f"IDX labels '{lbl_path}' must be a 1-D integer array (got {labels.dtype}, "
                f"{labels.shape}); convert the file"
            )
        if len(images) != len(labels):
            raise TlkitError(
                f"IDX {split} split has {len(images)} images but {len(labels)} labels "
                f"({img_path.name}, {lbl_path.name}); use files that belong together"
            )
        arrays[split] = (images, labels)
    return arrays


def _classes(folder: Path, values: np.ndarray) -> tuple[list[str], np.ndarray, int]:
    """Class names, and the ``label - offset -> class index`` lookup, for the label ``values``."""
    fashion = _same_dir(folder, FASHION_MNIST_DIR) and int(values.max()) < len(
        FASHION_MNIST_CLASSES
    )
    if fashion:
        classes = list(FASHION_MNIST_CLASSES)
        lookup = np.arange(len(classes))
        offset = 0
    else:
        classes = [str(int(v)) for v in values]
        offset = int(values.min())
        lookup = np.full(int(values.max()) - offset + 1, -1, dtype=np.int64)
        lookup[values - offset] = np.arange(len(values))
    return classes, lookup, offset


def load_idx_dir(folder: Path) -> DataSource:
    """The IDX files of ``folder`` as a source (``t10k-*`` is the test split).

    Labels become class indices in sorted order; Fashion-MNIST's folder keeps its class names.
    """
    files = find_idx_files(folder)
    if ("train", "images") not in files:
        raise TlkitError(
            f"IDX folder '{folder}' has no train-images-idx3-ubyte[.gz]; add the training "
            "images file"
        )
    arrays = _read_arrays(folder, files)
    values = np.unique(np.concatenate([lbl for _, lbl in arrays.values()]))
    classes, lookup, offset = _classes(folder, values)
    train_values = np.unique(arrays["train"][1])
    if len(train_values) < 2:
        raise TlkitError(
            f"only one class ({int(train_values[0])}) in the IDX training labels of "
            f"'{folder}'; a classifier needs at least two classes"
        )
    missing = sorted(set(values.tolist()) - set(train_values.tolist()))
    if missing:
        raise TlkitError(
            f"IDX val/test labels {missing[:5]} never occur in the training labels of "
            f"'{folder}'; use matching files"
        )

    def to_split(split: str) -> Split | None:
        if split not in arrays:
            return None
        images, labels = arrays[split]
        mapped = lookup[labels.astype(np.int64) - offset]
        return Split(list(images), mapped.tolist())

    train = to_split("train")
    assert train is not None
    return DataSource(classes=classes, train=train, val=to_split("val"), test=to_split("test"))


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
