"""Where images come from: image folders, IDX files, CSV lists and the bundled demo.

A :class:`DataSource` is a list of class names plus up to three :class:`Split` objects
(train, val, test). Each split holds items (a file path, or an in-memory ``uint8`` array for
IDX data) and integer labels that index into ``DataSource.classes``. Nothing is decoded here:
loading a source only lists files, so it stays fast even for tens of thousands of images.
Decoding lives in :mod:`tlkit.data.images`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlkit.data.csv_source import load_csv
from tlkit.data.folders import load_image_folder
from tlkit.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, find_idx_files, load_idx_dir
from tlkit.data.splits import (
    IMAGE_EXTENSIONS,
    DataSource,
    Item,
    Split,
    sample_shots,
    split_stratified,
)
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
    if isinstance(data, str) and data in ("demo", "fashion-mnist"):
        source = _load_bundled(data)
    else:
        source = _load_path(data)
        source.name = os.fspath(data)
    return source


def _load_bundled(name: str) -> DataSource:
    """The ``demo`` or ``fashion-mnist`` source, named after itself."""
    if name == "demo":
        root = demo_dir()
        if not root.is_dir():
            raise TlkitError(
                f"the bundled demo dataset is missing (looked in {root}); reinstall tlkit or "
                "regenerate it with `python data/make_demo.py`"
            )
        source = load_image_folder(root)
    else:
        if not find_idx_files(FASHION_MNIST_DIR):
            raise TlkitError(
                f"Fashion-MNIST is not installed ({FASHION_MNIST_DIR} not found); install it "
                "with `apt-get install dataset-fashion-mnist` or use `data=demo`"
            )
        source = load_idx_dir(FASHION_MNIST_DIR)
    source.name = name
    return source


def _load_path(data: str | os.PathLike[str]) -> DataSource:
    """The source at a path: a ``.csv`` file, an IDX folder or an image folder."""
    path = os.path.abspath(os.path.expanduser(os.fspath(data)))
    if not os.path.exists(path):
        raise TlkitError(
            f"data path '{os.fspath(data)}' does not exist; pass demo, fashion-mnist, "
            "an image folder, an IDX folder or a .csv file"
        )
    if os.path.isfile(path):
        if path.lower().endswith(".csv"):
            return load_csv(path)
        raise TlkitError(
            f"unsupported data file '{path}'; pass a folder of images or a .csv file "
            "with columns path,label"
        )
    if find_idx_files(Path(path)):
        return load_idx_dir(Path(path))
    return load_image_folder(Path(path))
