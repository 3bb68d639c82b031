"""Splits and data sources: items with integer labels, class names, stratified hold-outs, shots.

A :class:`DataSource` is a list of class names plus up to three :class:`Split` objects
(train, val, test). Each split holds items (a file path, or an in-memory ``uint8`` array for
IDX data) and integer labels that index into ``DataSource.classes``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from tlkit.errors import TlkitError

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "DataSource",
    "Item",
    "Split",
    "one_line",
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

SPLIT_NAMES = {
    "train": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
}
"""Folder names and CSV ``split`` values (lower case) -> the split they hold."""


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
        raise TlkitError(f"shots must be at least 1 (got {shots}); pass e.g. `shots=5`")
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
            f"`shots={shots}` needs {shots} images per class but {what}; "
            f"use `shots={min_count}` or fewer"
        )
    rng = np.random.default_rng(seed)
    picked = [rng.permutation(np.flatnonzero(labels == c))[:shots] for c in uniq]
    return split.subset(np.sort(np.concatenate(picked)))


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line (its type name when it has none)."""
    text = str(err) or type(err).__name__
    return " ".join(text.split())
