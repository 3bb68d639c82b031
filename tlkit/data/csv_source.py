"""The CSV reader: a ``path,label[,split]`` list of image files."""

from __future__ import annotations

import csv
import os
import re

from tlkit.data.splits import SPLIT_NAMES, DataSource, Item, Split, one_line
from tlkit.errors import TlkitError

__all__ = ["load_csv"]


def _read_rows(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The lower-case header columns (``path`` and ``label`` among them) and ``(line, row)``s."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, None)
            rows = [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise TlkitError(f"CSV '{path}' is not UTF-8 text; save it as UTF-8") from None
    except (OSError, csv.Error) as err:
        raise TlkitError(f"cannot read CSV '{path}' ({one_line(err)}); fix the file") from None
    columns = [c.strip().lower() for c in header or []]
    if "path" not in columns or "label" not in columns:
        found = ", ".join(c for c in columns if c) or "nothing"
        raise TlkitError(
            f"CSV '{path}' needs a header with columns 'path' and 'label' (found: {found}); "
            "add a first line like `path,label`"
        )
    return columns, rows


def _entries(
    path: str, rows: list[tuple[int, list[str]]], columns: list[str]
) -> dict[str, list[tuple[str, str]]]:
    """``split -> [(file, label), ...]``, refusing empty cells, unknown splits, missing files."""
    base = os.path.dirname(path)
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
        split = SPLIT_NAMES.get(split_value)
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
    return entries


def _classes(path: str, entries: dict[str, list[tuple[str, str]]]) -> list[str]:
    """Sorted training class names (numerically if all are integers), checked against val/test."""
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
    for split in ("val", "test"):
        extra = sorted({label for _, label in entries[split]} - names)
        if extra:
            shown = ", ".join(extra[:5]) + (", ..." if len(extra) > 5 else "")
            raise TlkitError(
                f"CSV '{path}' {split} rows use classes that train rows do not: {shown}; add "
                "training rows for them or drop those rows"
            )
    return classes


def load_csv(path: str) -> DataSource:
    """The images a ``path,label[,split]`` CSV lists (relative paths: from the CSV's folder)."""
    columns, rows = _read_rows(path)
    entries = _entries(path, rows, columns)
    if not entries["train"]:
        raise TlkitError(
            f"CSV '{path}' has no training rows; add rows with a path and label"
            + (" and split=train" if "split" in columns else "")
        )
    classes = _classes(path, entries)
    index = {c: i for i, c in enumerate(classes)}

    def to_split(split: str) -> Split | None:
        if not entries[split]:
            return None
        items: list[Item] = [p for p, _ in entries[split]]
        return Split(items, [index[label] for _, label in entries[split]])

    train = to_split("train")
    assert train is not None
    return DataSource(classes=classes, train=train, val=to_split("val"), test=to_split("test"))
