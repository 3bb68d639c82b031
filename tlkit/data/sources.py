"""Where images come from: image folders, IDX files, CSV lists and the bundled demo.

A :class:`DataSource` is a list of class names plus up to three :class:`Split` objects
(train, val, test). Each split holds items (a file path, or an in-memory ``uint8`` array for
IDX data) and integer labels that index into ``DataSource.classes``. Nothing is decoded here:
loading a source only lists files, so it stays fast even for tens of thousands of images.
Decoding lives in :mod:`tlkit.data.images`.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import numpy as np

from tlkit.errors import TlkitError

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_EXTENSIONS",
    "DataSource",
    "Item",
    "Split",
    "demo_dir",
    "load_source",
    "sample_shots",
    "split_stratified",
]

Item: TypeAlias = str | np.ndarray
"""One image: a file path, or an HxW / HxWxC ``uint8`` array (IDX data)."""

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".bmp",
        ".gif",
        ".jpeg",
        ".jpg",
        ".pbm",
        ".pgm",
        ".png",
        ".pnm",
        ".ppm",
        ".tif",
        ".tiff",
        ".webp",
    }
)
"""Lower-case file extensions treated as images when scanning folders."""

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


@dataclass
class Split:
    """Items and their integer labels for one split (train, val or test).

    Attributes:
        items: File paths or ``uint8`` arrays, one per example.
        labels: Class indices into ``DataSource.classes``, aligned with ``items``.
    """

    items: list[Item]
    labels: list[int]

    def __post_init__(self) -> None:
        if len(self.items) != len(self.labels):
            raise ValueError(f"Split has {len(self.items)} items but {len(self.labels)} labels")

    def __len__(self) -> int:
        """Return the number of examples."""
        return len(self.labels)

    def subset(self, indices: Sequence[int]) -> Split:
        """Return a new split holding the examples at ``indices``, in that order.

        Args:
            indices: Positions into this split (any integer sequence, e.g. a numpy array).

        Returns:
            The selected examples as a new :class:`Split`; items are shared, not copied.
        """
        idx = [int(i) for i in indices]
        return Split([self.items[i] for i in idx], [self.labels[i] for i in idx])

    def class_counts(self) -> dict[int, int]:
        """Return the number of examples per label, sorted by label."""
        return dict(sorted(Counter(self.labels).items()))


@dataclass
class DataSource:
    """A labelled image collection: class names and the train/val/test splits.

    Attributes:
        classes: Class names; ``classes[i]`` is the name of label ``i``.
        train: The training split (always present).
        val: The validation split, if the source defines one.
        test: The test split, if the source defines one.
        name: A short identifier, e.g. ``"demo"``, ``"fashion-mnist"`` or the path given.
    """

    classes: list[str]
    train: Split
    val: Split | None = None
    test: Split | None = None
    name: str = ""

    def splits(self) -> dict[str, Split]:
        """Return the splits that are present, keyed by ``"train"``, ``"val"``, ``"test"``."""
        out = {"train": self.train, "val": self.val, "test": self.test}
        return {k: v for k, v in out.items() if v is not None}

    def fingerprint(self) -> str:
        """Return a stable hash of the content identity, for use as a cache key.

        The hash covers the class names, the labels and, per item, either the path with the
        file's size and modification time, or the array's shape, dtype and bytes. It does not
        cover ``name``. Touching, replacing, adding or relabelling a file changes it; loading
        the same unchanged folder twice gives the same value.

        Returns:
            A 16-character hexadecimal string.
        """
        h = hashlib.sha256(b"tlkit-source-v1\0")
        h.update(json.dumps(self.classes).encode())
        for split_name in ("train", "val", "test"):
            split = getattr(self, split_name)
            h.update(f"\0{split_name}:".encode())
            if split is None:
                h.update(b"none")
                continue
            h.update(np.asarray(split.labels, dtype=np.int64).tobytes())
            for item in split.items:
                _hash_item(h, item)
        return h.hexdigest()[:16]


def _hash_item(h: hashlib._Hash, item: Item) -> None:
    if isinstance(item, np.ndarray):
        h.update(f"\0a{item.shape}{item.dtype.str}".encode())
        h.update(np.ascontiguousarray(item).data)
        return
    path = os.fspath(item)
    try:
        st = os.stat(path)
        meta = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        meta = "missing"
    h.update(f"\0p{path}\0{meta}".encode("utf-8", "surrogateescape"))


def demo_dir() -> Path:
    """Return the folder of the bundled demo dataset.

    Wheel installs ship it as ``<tlkit package>/_data/demo``; a source checkout or editable
    install has it at ``<repo root>/data/demo``. The first that exists is returned; if
    neither does, the checkout location is returned (where ``data/make_demo.py`` writes it).

    Returns:
        The path of the demo dataset folder.
    """
    package_dir = Path(__file__).resolve().parent.parent
    bundled = package_dir / "_data" / "demo"
    if bundled.is_dir():
        return bundled
    return package_dir.parent / "data" / "demo"


def load_source(data: str | os.PathLike[str]) -> DataSource:
    """Resolve ``data`` to a :class:`DataSource`, listing files without decoding them.

    Accepted values:

    * ``"demo"``: the bundled Fashion-MNIST subset (see :func:`demo_dir`).
    * ``"fashion-mnist"``: the full set from the Debian package ``dataset-fashion-mnist``.
    * A folder in ImageFolder layout, ``root/train/<class>/...`` with optional ``val/``
      (or ``valid/``, ``validation/``) and ``test/``; or ``root/<class>/...`` (train only).
      Class names are the sorted folder names of ``train``. Files whose extension is not in
      :data:`IMAGE_EXTENSIONS`, hidden files and hidden folders are ignored; symlinks are
      followed once (loops are cut).
    * A folder holding IDX files (``train-images-idx3-ubyte[.gz]``, ``train-labels-...``;
      ``t10k-*`` becomes the test split). Items are ``uint8`` arrays.
    * A ``.csv`` file with a header naming the columns ``path`` and ``label`` and optionally
      ``split`` (``train``/``val``/``test``; blank means train). Relative paths are resolved
      against the CSV's folder. Class names are sorted (numerically if all are integers).

    Args:
        data: ``"demo"``, ``"fashion-mnist"``, or a path to a folder or ``.csv`` file.

    Returns:
        The loaded source.

    Raises:
        TlkitError: If the path is missing or its content does not form a valid dataset; the
            message names the problem and the fix in one line.
    """
    if isinstance(data, str) and data == "demo":
        root = demo_dir()
        if not root.is_dir():
            raise TlkitError(
                f"the bundled demo dataset is missing (looked in {root}); reinstall tlkit or "
                "regenerate it with `python data/make_demo.py`"
            )
        source = _load_image_folder(root)
        source.name = "demo"
        return source
    if isinstance(data, str) and data == "fashion-mnist":
        if not _find_idx_files(FASHION_MNIST_DIR):
            raise TlkitError(
                f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} not found); install it "
                "with `apt-get install dataset-fashion-mnist` or use --data demo"
            )
        source = _load_idx_dir(FASHION_MNIST_DIR)
        source.name = "fashion-mnist"
        return source

    path = os.path.abspath(os.path.expanduser(os.fspath(data)))
    if not os.path.exists(path):
        raise TlkitError(
            f"data path '{os.fspath(data)}' does not exist; pass demo, fashion-mnist, "
            "an image folder, an IDX folder or a .csv file"
        )
    if os.path.isfile(path):
        if path.lower().endswith(".csv"):
            source = _load_csv(path)
        else:
            raise TlkitError(
                f"unsupported data file '{path}'; pass a folder of images or a .csv file "
                "with columns path,label"
            )
    elif _find_idx_files(Path(path)):
        source = _load_idx_dir(Path(path))
    else:
        source = _load_image_folder(Path(path))
    source.name = os.fspath(data)
    return source


def split_stratified(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out about ``fraction`` of each class, reproducibly.

    Per class, ``fraction * n`` examples (rounded half up) are held out, but never all of
    them: every class keeps at least one example in ``rest``. Both outputs keep the original
    order. For a fixed seed, a smaller fraction holds out a subset of a larger one.

    Args:
        split: The split to divide.
        fraction: Share to hold out, strictly between 0 and 1.
        seed: Random seed; the same seed gives the same division.

    Returns:
        ``(rest, held_out)``.

    Raises:
        TlkitError: If ``fraction`` is not strictly between 0 and 1.
    """
    if not 0.0 < fraction < 1.0:
        raise TlkitError(
            f"the held-out fraction must be between 0 and 1 (got {fraction}); use e.g. 0.1"
        )
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels, dtype=np.int64)
    held: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n_held = min(math.floor(fraction * len(idx) + 0.5), len(idx) - 1)
        held.append(rng.permutation(idx)[:n_held])
    mask = np.zeros(len(labels), dtype=bool)
    if held:
        mask[np.concatenate(held)] = True
    return split.subset(np.flatnonzero(~mask)), split.subset(np.flatnonzero(mask))


def sample_shots(
    split: Split, shots: int, seed: int, *, classes: Sequence[str] | None = None
) -> Split:
    """Draw exactly ``shots`` examples per class, reproducibly.

    For a fixed seed, a smaller ``shots`` draws a subset of a larger one. The result keeps
    the original order.

    Args:
        split: The split to sample from.
        shots: Examples per class (K), at least 1.
        seed: Random seed; the same seed gives the same sample.
        classes: Class names, used only to name a class in the error message.

    Returns:
        A split with ``shots`` examples of every class present in ``split``.

    Raises:
        TlkitError: If ``shots`` < 1 or a class has fewer than ``shots`` examples; the
            message names the class, its count and the largest usable ``--shots``.
    """
    if shots < 1:
        raise TlkitError(f"--shots must be at least 1 (got {shots})")
    labels = np.asarray(split.labels, dtype=np.int64)
    uniq, counts = np.unique(labels, return_counts=True)
    if len(uniq) == 0:
        raise TlkitError("cannot sample shots from an empty split; check the data source")
    short = [(int(c), int(n)) for c, n in zip(uniq, counts, strict=True) if n < shots]
    if short:
        short.sort(key=lambda cn: (cn[1], cn[0]))

        def _name(c: int) -> str:
            return f"'{classes[c]}'" if classes is not None and c < len(classes) else f"{c}"

        min_count = short[0][1]
        if len(short) == 1:
            what = f"class {_name(short[0][0])} has only {min_count}"
        else:
            listed = ", ".join(f"{_name(c)} ({n})" for c, n in short[:3])
            more = f" and {len(short) - 3} more" if len(short) > 3 else ""
            what = f"classes {listed}{more} have fewer"
        raise TlkitError(
            f"--shots {shots} needs {shots} images per class but {what}; "
            f"use --shots {min_count} or fewer"
        )
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in uniq]
    return split.subset(np.sort(np.concatenate(picked)))


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


def _load_image_folder(root: Path) -> DataSource:
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


def _find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
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


def _load_idx_dir(folder: Path) -> DataSource:
    files = _find_idx_files(folder)
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


def _load_csv(path: str) -> DataSource:
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
