"""Undecodable image files: find them, skip them with a warning, or refuse the data."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_warn

from tlkit.data.images import probe_image
from tlkit.data.sources import Split
from tlkit.errors import TlkitError

__all__ = [
    "drop_undecodable",
    "refuse_unusable",
    "skip_undecodable",
    "split_fix",
    "summary",
    "undecodable",
]

#: ``(position, reason)`` of each undecodable file of a split.
Bad = list[tuple[int, str]]


def undecodable(split: Split) -> Bad:
    """``(position, reason)`` of every image file of ``split`` that does not decode."""
    return [
        (i, reason)
        for i, item in enumerate(split.items)
        if isinstance(item, (str, os.PathLike)) and (reason := probe_image(item)) is not None
    ]


def _example(split: Split, bad: Bad) -> str:
    """``PATH (REASON)`` of the first undecodable file in ``bad``."""
    first, reason = bad[0]
    return f"{split.items[first]} ({reason})"


def summary(split: Split, bad: Bad) -> str:
    """``N undecodable, e.g. PATH (REASON)``: how many files of ``split`` fail, and one."""
    return f"{len(bad)} undecodable, e.g. {_example(split, bad)}"


def skip_undecodable(name: str, split: Split, bad: Bad, strict: bool) -> Split:
    """``split`` without the ``bad`` positions: warn, or with ``strict`` refuse.

    Raises:
        TlkitError: With ``strict``, if ``bad`` is not empty.
    """
    if not bad:
        return split
    shown = "; ".join(f"{split.items[i]} ({reason})" for i, reason in bad[:3])
    if strict:
        raise TlkitError(
            f"{len(bad)} undecodable image(s) in {name}, e.g. {shown}; "
            "remove them, or `strict=False` to skip them"
        )
    rank_zero_warn(f"skipping {len(bad)} undecodable image(s) in {name}, e.g. {shown}")
    bad_set = {i for i, _ in bad}
    return split.subset([i for i in range(len(split)) if i not in bad_set])


def drop_undecodable(name: str, split: Split, strict: bool) -> Split:
    """``split`` without its undecodable files (:func:`skip_undecodable`).

    Raises:
        TlkitError: If no file of a non-empty ``split`` decodes, or (with ``strict``) if any
            file does not decode.
    """
    bad = undecodable(split)
    if split and len(bad) == len(split):
        raise TlkitError(
            f"no decodable images left in {name} ({summary(split, bad)}); replace or remove them"
        )
    return skip_undecodable(name, split, bad, strict)


def refuse_unusable(
    splits: dict[str, Split],
    bad: dict[str, Bad],
    classes: Sequence[str],
    source_name: str,
    split_fix: Callable[[str, Split], str],
) -> None:
    """Refuse the data if its undecodable files leave a run without images it needs.

    Args:
        splits: The ``train``, ``val`` and ``test`` splits.
        bad: Per split, the ``(position, reason)`` of each undecodable file.
        classes: The class names, index order.
        source_name: What to call the data in the message.
        split_fix: ``(split name, split) -> ", or ..."``: how to do without that split.

    Raises:
        TlkitError: If no image decodes at all, a split has no decodable image left, or a
            class has no decodable training image left.
    """
    if any(bad.values()) and all(len(bad[k]) == len(v) for k, v in splits.items()):
        total = sum(len(b) for b in bad.values())
        first = next(name for name in splits if bad[name])
        raise TlkitError(
            f"no decodable images in {source_name} ({total} undecodable, e.g. "
            f"{_example(splits[first], bad[first])}); replace or remove them"
        )
    for name, split in splits.items():
        if split and len(bad[name]) == len(split):
            raise TlkitError(
                f"no decodable images left in {name} ({summary(split, bad[name])}); "
                f"replace or remove them{split_fix(name, split)}"
            )
    train, lost = splits["train"], bad["train"]
    lost_at = {i for i, _ in lost}
    kept = {label for i, label in enumerate(train.labels) if i not in lost_at}
    for label, class_name in enumerate(classes):
        gone = [(i, reason) for i, reason in lost if train.labels[i] == label]
        if gone and label not in kept:
            raise TlkitError(
                f"class '{class_name}' has no decodable training image left "
                f"({summary(train, gone)}); replace them or remove the class"
            )


def split_fix(name: str, split: Split, data: str | os.PathLike, given: set[str]) -> str:
    """How to do without split ``name``: remove it where the data defines it.

    Args:
        name: The split (``val`` or ``test``).
        split: Its items.
        data: The data path the user gave.
        given: The splits the data defines itself (the others are held out from train).

    Returns:
        ``", or remove ..."``, or ``""`` when there is nothing of its own to remove.
    """
    if name not in given:
        return ""  # held out from train: nothing of its own to remove
    data = os.fspath(data)
    if data.lower().endswith(".csv"):
        return f", or remove the {name} rows of {data} to hold out part of train"
    root = os.path.abspath(os.path.expanduser(data))
    folder = Path(os.path.relpath(os.fspath(split.items[0]), root)).parts[0]
    if folder == os.pardir:  # not below the path given (the bundled demo)
        return ""
    return f", or remove {folder}/ to hold out part of train"
