"""Readers for the dataset layouts tlkit accepts: image folders, IDX files and CSV lists.

Each reader lists files (or, for IDX, reads the arrays) and returns a :class:`DataSource`;
nothing is decoded. :func:`tlkit.data.sources.load_source` picks the reader for a path.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
import re
from pathlib import Path

import numpy as np

from tlkit.data import sources
from tlkit.data.sources import IMAGE_EXTENSIONS, DataSource, Item, Split
from tlkit.errors import TlkitError

__all__ = ["find_idx_files", "load_csv", "load_idx_dir", "load_image_folder"]

_SPLIT_DIRS = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
_IGNORED_DIRS = frozenset({"__MACOSX", "__pycache__"})
_IDX_NAME = re.compile(
    r"^(?P<split>train|t10k|test|val)-(?P<kind>images|labels)[.-]idx(?P<ndim>\d)-ubyte(?P<gz>\.gz)?$",
    re.IGNORECASE,
)
_IDX_SPLITS = {"train": "train", "t10k": "test", "test": "test", "val": "val"}
_LAYOUTS = (
    "expected <root>/train/<class>/*.png (optional val/, test/), <root>/<class>/*.png, "
    "IDX files such as train-images-idx3-ubyte.gz, or a .csv file with columns path,label"
)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name in _IGNORED_DIRS


def _scan_images(folder: str) -> list[str]:
    """List image files below ``folder``, following symlinks but never a folder twice."""
    found: list[str] = []
    visited: set[str] = set()
    stack = [folder]
    while stack:
        current = stack.pop()
        real = os.path.realpath(current)
        if real in visited:
            continue
        visited.add(real)
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError:
            continue
        for entry in entries:
            if _is_hidden(entry.name):
                continue
            try:
                if entry.is_dir():
                    stack.append(entry.path)
                elif (
                    os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file()
                ):
                    found.append(entry.path)
            except OSError:
                continue
    found.sort()
    return found


def _subdirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as err:
        raise TlkitError(
            f"cannot read folder '{folder}' ({err.strerror}); check permissions"
        ) from None
    names = []
    for entry in entries:
        if _is_hidden(entry.name):
            continue
        try:
            if entry.is_dir():
                names.append(entry.name)
        except OSError:
            continue
    return sorted(names)


def _has_direct_images(folder: Path) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(
                not _is_hidden(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
                for e in it
            )
    except OSError:
        return False


def _scan_classes(split_dir: Path, label: str) -> dict[str, list[str]]:
    """Map each class folder of ``split_dir`` to its sorted image paths."""
    names = _subdirs(split_dir)
    if not names:
        if _has_direct_images(split_dir):
            raise TlkitError(
                f"images in '{label}' are not in class folders; move them into "
                f"{label}/<class>/ folders, one per class"
            )
        raise TlkitError(f"no images found in '{label}'; {_LAYOUTS}")
    per_class = {}
    for name in names:
        files = _scan_images(os.path.join(split_dir, name))
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise TlkitError(
                f"class folder '{label}/{name}' has no images ({exts}); add images or "
                "remove the folder"
            )
        per_class[name] = files
    return per_class


def load_image_folder(root: Path) -> DataSource:
    root_label = os.fspath(root)
    found: dict[str, str] = {}
    for name in _subdirs(root):
        canonical = _SPLIT_DIRS.get(name.lower())
        if canonical is None:
            continue
        if canonical in found:
            raise TlkitError(
                f"'{root_label}' has both '{found[canonical]}' and '{name}' folders; keep one"
            )
        found[canonical] = name

    if "train" not in found:
        if found:
            present = ", ".join(f"{v}/" for v in found.values())
            raise TlkitError(
                f"'{root_label}' has {present} but no train/ folder; add {root_label}/train/"
                "<class>/ with the training images"
            )
        per_class = _scan_classes(root, root_label)
        classes = list(per_class)
        _check_classes(classes, root_label)
        return DataSource(classes=classes, train=_to_split(per_class, classes))

    per_split = {
        split: _scan_classes(root / dirname, os.path.join(root_label, dirname))
        for split, dirname in found.items()
    }
    classes = list(per_split["train"])
    _check_classes(classes, os.path.join(root_label, found["train"]))
    known = set(classes)
    for split in ("val", "test"):
        if split in per_split:
            extra = [c for c in per_split[split] if c not in known]
            if extra:
                shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
                raise TlkitError(
                    f"'{found[split]}/' has classes that train/ does not: {shown}; add them "
                    f"to train/ or remove them from {found[split]}/"
                )
    return DataSource(
        classes=classes,
        train=_to_split(per_split["train"], classes),
        val=_to_split(per_split["val"], classes) if "val" in per_split else None,
        test=_to_split(per_split["test"], classes) if "test" in per_split else None,
    )


def _check_classes(classes: list[str], where: str) -> None:
    if len(classes) < 2:
        raise TlkitError(
            f"only one class ('{classes[0]}') found in '{where}'; a classifier needs at least "
            "two class folders"
        )


def _to_split(per_class: dict[str, list[str]], classes: list[str]) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    items: list[Item] = []
    labels: list[int] = []
    for name, files in per_class.items():
        items.extend(files)
        labels.extend([index[name]] * len(files))
    return Split(items, labels)


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
            f"cannot read IDX file '{path}' ({_one_line(err)}); re-download or re-extract it"
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


def load_idx_dir(folder: Path) -> DataSource:
    files = find_idx_files(folder)
    if ("train", "images") not in files:
        raise TlkitError(
            f"IDX folder '{folder}' has no train-images-idx3-ubyte[.gz]; add the training "
            "images file"
        )
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

    values = np.unique(np.concatenate([lbl for _, lbl in arrays.values()]))
    fashion = _same_dir(folder, sources.FASHION_MNIST_DIR) and int(values.max()) < len(
        sources.FASHION_MNIST_CLASSES
    )
    if fashion:
        classes = list(sources.FASHION_MNIST_CLASSES)
        lookup = np.arange(len(classes))
        offset = 0
    else:
        classes = [str(int(v)) for v in values]
        offset = int(values.min())
        lookup = np.full(int(values.max()) - offset + 1, -1, dtype=np.int64)
        lookup[values - offset] = np.arange(len(values))
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


def load_csv(path: str) -> DataSource:
    base = os.path.dirname(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise TlkitError(f"CSV '{path}' is not UTF-8 text; save it as UTF-8") from None
    except (OSError, csv.Error) as err:
        raise TlkitError(f"cannot read CSV '{path}' ({_one_line(err)}); fix the file") from None
    columns = [c.strip().lower() for c in header or []]
    if "path" not in columns or "label" not in columns:
        found = ", ".join(c for c in columns if c) or "nothing"
        raise TlkitError(
            f"CSV '{path}' needs a header with columns 'path' and 'label' (found: {found}); "
            "add a first line like `path,label`"
        )
    i_path, i_label = columns.index("path"), columns.index("label")
    i_split = columns.index("split") if "split" in columns else None

    def cell(row: list[str], i: int | None) -> str:
        return row[i].strip() if i is not None and i < len(row) else ""

    entries: dict[str, list[tuple[str, str]]] = {"train": [], "val": [], "test": []}
    missing: list[str] = []
    for line, row in rows:
        if not any(c.strip() for c in row):
            continue
        rel, label = cell(row, i_path), cell(row, i_label)
        if not rel:
            raise TlkitError(f"CSV '{path}' line {line}: empty path; fill it in or drop the row")
        if not label:
            raise TlkitError(
                f"CSV '{path}' line {line}: empty label for '{rel}'; fill it in or drop the row"
            )
        split_value = cell(row, i_split).lower() or "train"
        split = _SPLIT_DIRS.get(split_value)
        if split is None:
            raise TlkitError(
                f"CSV '{path}' line {line}: unknown split '{split_value}'; use train, val or test"
            )
        full = os.path.join(base, os.path.expanduser(rel))
        if not os.path.isfile(full):
            missing.append(rel)
        entries[split].append((full, label))
    if missing:
        shown = ", ".join(f"'{m}'" for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise TlkitError(
            f"CSV '{path}' lists {len(missing)} missing file{'s' if len(missing) > 1 else ''}: "
            f"{shown}{more}; fix the paths (relative ones are resolved against the CSV's folder)"
        )
    if not entries["train"]:
        raise TlkitError(
            f"CSV '{path}' has no training rows; add rows with a path and label"
            + (" and split=train" if i_split is not None else "")
        )
    names = {label for _, label in entries["train"]}
    if all(re.fullmatch(r"[+-]?\d+", n) for n in names):
        classes = sorted(names, key=int)
    else:
        classes = sorted(names)
    if len(classes) < 2:
        raise TlkitError(
            f"only one class ('{classes[0]}') in the training rows of CSV '{path}'; a "
            "classifier needs at least two classes"
        )
    index = {c: i for i, c in enumerate(classes)}
    for split in ("val", "test"):
        extra = sorted({label for _, label in entries[split]} - names)
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise TlkitError(
                f"CSV '{path}' {split} rows use classes that train rows do not: {shown}; add "
                "training rows for them or drop those rows"
            )

    def to_split(split: str) -> Split | None:
        if not entries[split]:
            return None
        items: list[Item] = [p for p, _ in entries[split]]
        return Split(items, [index[label] for _, label in entries[split]])

    train = to_split("train")
    assert train is not None
    return DataSource(classes=classes, train=train, val=to_split("val"), test=to_split("test"))


def _one_line(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return " ".join(text.split())
