"""The image-folder reader: ``root/train/<class>/*`` (optional val/, test/) or ``root/<class>/*``.

Files are listed, not decoded.
"""

from __future__ import annotations

import os
from pathlib import Path

from tlkit.data.splits import IMAGE_EXTENSIONS, SPLIT_NAMES, DataSource, Item, Split
from tlkit.errors import TlkitError

__all__ = ["load_image_folder"]

_IGNORED_DIRS = frozenset({"__MACOSX", "__pycache__"})
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
        canonical = SPLIT_NAMES.get(name.lower())
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
