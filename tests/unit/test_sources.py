"""Tests for tlkit.data.sources and tlkit.data.images."""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from tlkit.data import sources
from tlkit.data.images import load_image, probe_image
from tlkit.data.sources import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_EXTENSIONS,
    DataSource,
    Split,
    demo_dir,
    load_source,
    sample_shots,
    split_stratified,
)
from tlkit.errors import TlkitError

pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")


def make_png(path: Path, value: int = 128, size: tuple[int, int] = (6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, value).save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> None:
    for cls, n in counts.items():
        for i in range(n):
            make_png(root / cls / f"{i}{ext}", value=i * 10 % 256)


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(TlkitError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert msg.strip() == msg and msg, msg
    return msg


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw, mtime=0) if compress else raw)
    return path


def names_of(split: Split) -> list[str]:
    return [os.path.basename(str(item)) for item in split.items]


# --- image folders ---------------------------------------------------------------------------


def test_image_folder_with_train_val_test(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"dog": 3, "cat": 2, "bird": 4})
    make_folder(tmp_path / "val", {"cat": 1, "dog": 2})
    make_folder(tmp_path / "test", {"bird": 1, "cat": 1, "dog": 1})
    src = load_source(tmp_path)
    assert src.classes == ["bird", "cat", "dog"]
    assert src.name == str(tmp_path)
    assert len(src.train) == 9 and len(src.val) == 3 and len(src.test) == 3
    assert Counter(src.train.labels) == {0: 4, 1: 2, 2: 3}
    assert Counter(src.val.labels) == {1: 1, 2: 2}
    for split in (src.train, src.val, src.test):
        for item, label in zip(split.items, split.labels, strict=True):
            assert isinstance(item, str) and os.path.isabs(item)
            assert Path(item).parent.name == src.classes[label]
    assert set(src.splits()) == {"train", "val", "test"}


@pytest.mark.parametrize("alias", ["valid", "validation", "Val"])
def test_val_folder_aliases(tmp_path: Path, alias: str) -> None:
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    make_folder(tmp_path / alias, {"a": 1, "b": 1})
    src = load_source(str(tmp_path))
    assert len(src.val) == 2 and src.test is None


def test_two_val_aliases_is_an_error(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 1, "b": 1})
    make_folder(tmp_path / "val", {"a": 1})
    make_folder(tmp_path / "valid", {"a": 1})
    msg = error_of(load_source, tmp_path)
    assert "'val'" in msg and "'valid'" in msg


def test_flat_class_folders_are_train_only(tmp_path: Path) -> None:
    make_folder(tmp_path, {"yes": 3, "no": 2}, ext=".JPG")
    src = load_source(tmp_path)
    assert src.classes == ["no", "yes"]
    assert len(src.train) == 5 and src.val is None and src.test is None
    assert src.train.labels == [0, 0, 1, 1, 1]


def test_nested_subfolders_are_part_of_their_class(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 1, "b": 1})
    make_png(tmp_path / "a" / "deeper" / "x.png")
    src = load_source(tmp_path)
    assert Counter(src.train.labels) == {0: 2, 1: 1}


def test_non_images_and_hidden_files_are_ignored(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    (tmp_path / "train" / "a" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "train" / "a" / "notes.txt").write_text("hello")
    (tmp_path / "train" / "a" / "._0.png").write_bytes(b"AppleDouble")
    (tmp_path / "train" / ".DS_Store").write_bytes(b"junk")
    (tmp_path / "train" / "README.txt").write_text("about")
    make_png(tmp_path / "train" / ".ipynb_checkpoints" / "x.png")
    make_png(tmp_path / "train" / "__MACOSX" / "x.png")
    src = load_source(tmp_path)
    assert src.classes == ["a", "b"]
    assert sorted(names_of(src.train)) == ["0.png", "0.png", "1.png", "1.png"]


def test_spaces_and_non_ascii_names(tmp_path: Path) -> None:
    root = tmp_path / "my data ü"
    make_png(root / "train" / "café crème" / "ï 1.png")
    make_png(root / "train" / "日本" / "写真 2.png")
    make_png(root / "train" / "plain" / "a b.png")
    src = load_source(root)
    assert src.classes == sorted(["café crème", "日本", "plain"])
    assert len(src.train) == 3
    for item in src.train.items:
        assert load_image(item).shape == (5, 6, 3)
    assert src.fingerprint() == load_source(root).fingerprint()


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_does_not_hang(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 2, "b": 1})
    os.symlink(tmp_path / "train" / "a", tmp_path / "train" / "a" / "loop")
    os.symlink(tmp_path / "train", tmp_path / "train" / "b" / "up")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "train" / "b" / "broken.png")
    start = time.perf_counter()
    src = load_source(tmp_path)
    assert time.perf_counter() - start < 5
    assert src.classes == ["a", "b"]
    assert Counter(src.train.labels)[0] == 2


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlinked_class_folder_is_followed(tmp_path: Path) -> None:
    make_folder(tmp_path / "elsewhere", {"c": 2})
    make_folder(tmp_path / "root", {"a": 1})
    os.symlink(tmp_path / "elsewhere" / "c", tmp_path / "root" / "c")
    src = load_source(tmp_path / "root")
    assert src.classes == ["a", "c"] and len(src.train) == 3


# --- folder errors ---------------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    msg = error_of(load_source, tmp_path / "nope")
    assert "nope" in msg and "does not exist" in msg


def test_empty_folder_names_expected_layout(tmp_path: Path) -> None:
    msg = error_of(load_source, tmp_path)
    assert "no images found" in msg and "train/<class>" in msg


def test_only_non_images(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / ".DS_Store").write_text("x")
    assert "no images found" in error_of(load_source, tmp_path)


def test_images_without_class_folders(tmp_path: Path) -> None:
    make_png(tmp_path / "x.png")
    assert "class folders" in error_of(load_source, tmp_path)


def test_single_class(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"lonely": 3})
    msg = error_of(load_source, tmp_path)
    assert "only one class" in msg and "lonely" in msg


def test_class_folder_without_images(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 1, "b": 1})
    (tmp_path / "train" / "empty_one").mkdir()
    (tmp_path / "train" / "empty_one" / "x.txt").write_text("x")
    msg = error_of(load_source, tmp_path)
    assert "empty_one" in msg and "no images" in msg


def test_val_classes_missing_from_train(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 1, "b": 1})
    make_folder(tmp_path / "val", {"a": 1, "zebra": 1})
    msg = error_of(load_source, tmp_path)
    assert "zebra" in msg and "train" in msg


def test_val_without_train(tmp_path: Path) -> None:
    make_folder(tmp_path / "val", {"a": 1, "b": 1})
    assert "no train/" in error_of(load_source, tmp_path)


def test_unsupported_file(tmp_path: Path) -> None:
    target = make_png(tmp_path / "one.png")
    assert "unsupported data file" in error_of(load_source, target)


# --- CSV ------------------------------------------------------------------------------------


def test_csv_good(tmp_path: Path) -> None:
    make_png(tmp_path / "img" / "a 1.png")
    make_png(tmp_path / "img" / "b.png")
    make_png(tmp_path / "c.png")
    absolute = make_png(tmp_path / "elsewhere" / "d.png")
    (tmp_path / "list.csv").write_text(
        f"label,path\ncat,img/a 1.png\ndog, img/b.png\ncat,c.png\ndog,{absolute}\n\n",
        encoding="utf-8",
    )
    src = load_source(tmp_path / "list.csv")
    assert src.classes == ["cat", "dog"]
    assert src.train.labels == [0, 1, 0, 1]
    assert all(os.path.isfile(p) for p in src.train.items)
    assert src.val is None and src.test is None


def test_csv_with_bom_and_numeric_labels_sorted_numerically(tmp_path: Path) -> None:
    for i in range(3):
        make_png(tmp_path / f"{i}.png")
    (tmp_path / "l.csv").write_bytes("\ufeffPath,Label\n0.png,10\n1.png,2\n2.png,1\n".encode())
    src = load_source(tmp_path / "l.csv")
    assert src.classes == ["1", "2", "10"]
    assert src.train.labels == [2, 1, 0]


def test_csv_split_column(tmp_path: Path) -> None:
    rows = ["path,label,split"]
    for i in range(8):
        make_png(tmp_path / f"{i}.png")
    splits = ["train", "train", "TRAIN", "", "val", "validation", "test", "test"]
    labels = ["x", "y", "x", "y", "x", "y", "y", "x"]
    rows += [f"{i}.png,{lab},{sp}" for i, (lab, sp) in enumerate(zip(labels, splits, strict=True))]
    (tmp_path / "s.csv").write_text("\n".join(rows) + "\n")
    src = load_source(tmp_path / "s.csv")
    assert (len(src.train), len(src.val), len(src.test)) == (4, 2, 2)
    assert src.val.labels == [0, 1] and src.test.labels == [1, 0]


def test_csv_missing_files_named(tmp_path: Path) -> None:
    make_png(tmp_path / "ok.png")
    lines = ["path,label", "ok.png,a"] + [f"gone{i}.png,b" for i in range(5)]
    (tmp_path / "m.csv").write_text("\n".join(lines))
    msg = error_of(load_source, tmp_path / "m.csv")
    assert "5 missing files" in msg and "gone0.png" in msg and "2 more" in msg
    assert "gone4.png" not in msg


def test_csv_empty_label(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png")
    make_png(tmp_path / "b.png")
    (tmp_path / "e.csv").write_text("path,label\na.png,cat\nb.png,\n")
    msg = error_of(load_source, tmp_path / "e.csv")
    assert "empty label" in msg and "b.png" in msg and "line 3" in msg


@pytest.mark.parametrize("content", ["a.png,cat\nb.png,dog\n", "file,class\na.png,cat\n", ""])
def test_csv_bad_header(tmp_path: Path, content: str) -> None:
    (tmp_path / "h.csv").write_text(content)
    msg = error_of(load_source, tmp_path / "h.csv")
    assert "'path'" in msg and "'label'" in msg and "path,label" in msg


def test_csv_unknown_split_and_unknown_val_class(tmp_path: Path) -> None:
    for name in "abc":
        make_png(tmp_path / f"{name}.png")
    (tmp_path / "u.csv").write_text("path,label,split\na.png,x,train\nb.png,y,holdout\n")
    assert "holdout" in error_of(load_source, tmp_path / "u.csv")
    (tmp_path / "v.csv").write_text("path,label,split\na.png,x,train\nb.png,y,train\nc.png,z,val\n")
    msg = error_of(load_source, tmp_path / "v.csv")
    assert "val rows" in msg and "do not: z;" in msg


def test_csv_single_class(tmp_path: Path) -> None:
    make_png(tmp_path / "a.png")
    (tmp_path / "o.csv").write_text("path,label\na.png,solo\n")
    msg = error_of(load_source, tmp_path / "o.csv")
    assert "only one class" in msg and "solo" in msg


# --- IDX ------------------------------------------------------------------------------------


def test_small_idx_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    write_idx(tmp_path / "train-images-idx3-ubyte", rng.integers(0, 256, (6, 4, 3)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([3, 5, 3, 5, 7, 7]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (2, 4, 3)), True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([7, 3]), True)
    src = load_source(tmp_path)
    assert src.classes == ["3", "5", "7"]
    assert src.train.labels == [0, 1, 0, 1, 2, 2] and src.test.labels == [2, 0]
    assert src.val is None
    item = src.train.items[0]
    assert isinstance(item, np.ndarray) and item.shape == (4, 3) and item.dtype == np.uint8
    assert load_image(item).shape == (4, 3, 3)


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2)))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1]))
    msg = error_of(load_source, tmp_path)
    assert "3 images but 2 labels" in msg


def test_idx_missing_labels(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2)))
    msg = error_of(load_source, tmp_path)
    assert "train-images-idx3-ubyte" in msg and "labels" in msg


needs_fashion = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="dataset-fashion-mnist is not installed",
)


@needs_fashion
def test_fashion_mnist_from_debian_dir() -> None:
    start = time.perf_counter()
    src = load_source("fashion-mnist")
    elapsed = time.perf_counter() - start
    assert src.name == "fashion-mnist"
    assert src.classes == list(FASHION_MNIST_CLASSES)
    assert (len(src.train), len(src.test)) == (60000, 10000) and src.val is None
    assert Counter(src.train.labels) == dict.fromkeys(range(10), 6000)
    assert src.train.items[0].shape == (28, 28)
    assert elapsed < 5, f"loading Fashion-MNIST took {elapsed:.2f}s"
    by_path = load_source(FASHION_MNIST_DIR)
    assert by_path.classes == src.classes
    assert by_path.fingerprint() == src.fingerprint()


@needs_fashion
def test_truncated_idx_copy(tmp_path: Path) -> None:
    raw = gzip.decompress((FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])
    shutil.copy(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").symlink_to(tmp_path / "t10k-labels-idx1-ubyte.gz")
    msg = error_of(load_source, tmp_path)
    assert "truncated" in msg and "train-images-idx3-ubyte" in msg


def test_truncated_gzip_idx(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((50, 9, 9)), True)
    data = (tmp_path / "train-images-idx3-ubyte.gz").read_bytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(data[: len(data) // 2])
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(50) % 2)
    msg = error_of(load_source, tmp_path)
    assert "train-images-idx3-ubyte.gz" in msg


def test_fashion_mnist_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sources, "FASHION_MNIST_DIR", tmp_path / "absent")
    msg = error_of(load_source, "fashion-mnist")
    assert "apt-get install dataset-fashion-mnist" in msg


# --- demo -----------------------------------------------------------------------------------


def test_demo_dataset() -> None:
    src = load_source("demo")
    assert src.name == "demo"
    assert src.classes == sorted(FASHION_MNIST_CLASSES)
    assert (len(src.train), len(src.val), len(src.test)) == (200, 100, 500)
    assert Counter(src.train.labels) == dict.fromkeys(range(10), 20)
    assert Counter(src.val.labels) == dict.fromkeys(range(10), 10)
    assert Counter(src.test.labels) == dict.fromkeys(range(10), 50)
    assert not set(names_of(src.train)) & set(names_of(src.val))
    with Image.open(src.train.items[0]) as im:
        assert im.mode == "L" and im.size == (28, 28)
    assert load_image(src.test.items[-1]).shape == (28, 28, 3)
    assert (demo_dir() / "LICENSE").is_file()
    size = sum(p.stat().st_size for p in demo_dir().rglob("*") if p.is_file())
    assert size < 1024 * 1024


def test_demo_dir_location() -> None:
    root = demo_dir()
    assert root.is_dir() and (root / "train").is_dir()
    assert root.parts[-2:] in (("data", "demo"), ("_data", "demo"))


# --- splitting and sampling ------------------------------------------------------------------


def labelled(counts: dict[int, int]) -> Split:
    labels = [c for c, n in counts.items() for _ in range(n)]
    return Split([f"item{i}" for i in range(len(labels))], labels)


def test_split_stratified_keeps_proportions() -> None:
    split = labelled({0: 100, 1: 50, 2: 10, 3: 1, 4: 2})
    rest, held = split_stratified(split, 0.2, seed=1)
    assert Counter(held.labels) == {0: 20, 1: 10, 2: 2}
    assert set(rest.labels) == {0, 1, 2, 3, 4}
    assert sorted(rest.items + held.items) == sorted(split.items)
    assert not set(rest.items) & set(held.items)
    for part in (rest, held):
        positions = [split.items.index(i) for i in part.items]
        assert positions == sorted(positions)
        assert all(split.labels[p] == lab for p, lab in zip(positions, part.labels, strict=True))


def test_split_stratified_is_seeded() -> None:
    split = labelled({0: 40, 1: 40})
    a = split_stratified(split, 0.25, seed=7)
    b = split_stratified(split, 0.25, seed=7)
    c = split_stratified(split, 0.25, seed=8)
    assert a[1].items == b[1].items and a[0].items == b[0].items
    assert a[1].items != c[1].items


def test_split_stratified_rejects_bad_fraction() -> None:
    assert "between 0 and 1" in error_of(split_stratified, labelled({0: 3, 1: 3}), 1.0, 0)


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 30), min_size=1, max_size=6),
    fraction=st.floats(0.01, 0.99),
    seed=st.integers(0, 2**32 - 1),
)
def test_split_stratified_properties(counts: list[int], fraction: float, seed: int) -> None:
    split = labelled(dict(enumerate(counts)))
    rest, held = split_stratified(split, fraction, seed)
    assert len(rest) + len(held) == len(split)
    rest_counts, held_counts = Counter(rest.labels), Counter(held.labels)
    for label, n in enumerate(counts):
        assert rest_counts[label] >= 1
        assert abs(held_counts[label] - fraction * n) <= 0.5 + 1e-9 or rest_counts[label] == 1


def test_sample_shots_exact_and_seeded() -> None:
    split = labelled({0: 30, 1: 12, 2: 5})
    five = sample_shots(split, 5, seed=3)
    assert Counter(five.labels) == {0: 5, 1: 5, 2: 5}
    assert sample_shots(split, 5, seed=3).items == five.items
    assert sample_shots(split, 5, seed=4).items != five.items
    three = sample_shots(split, 3, seed=3)
    assert set(three.items) <= set(five.items)
    assert all(
        split.labels[split.items.index(i)] == lab
        for i, lab in zip(five.items, five.labels, strict=True)
    )


def test_sample_shots_too_few_names_class() -> None:
    split = labelled({0: 30, 1: 3, 2: 4})
    msg = error_of(sample_shots, split, 5, 0, classes=["cat", "bird", "fish"])
    assert "'bird' (3)" in msg and "'fish' (4)" in msg and "`shots=3`" in msg
    msg = error_of(sample_shots, split, 4, 0)
    assert "class 1 has only 3" in msg and "`shots=3`" in msg
    assert "at least 1" in error_of(sample_shots, split, 0, 0)


def test_split_subset_and_len() -> None:
    split = labelled({0: 2, 1: 2})
    sub = split.subset(np.array([3, 0]))
    assert sub.items == ["item3", "item0"] and sub.labels == [1, 0] and len(sub) == 2
    assert split.class_counts() == {0: 2, 1: 2}
    with pytest.raises(ValueError):
        Split(["a"], [])


# --- fingerprint ----------------------------------------------------------------------------


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    make_folder(tmp_path / "train", {"a": 2, "b": 2})
    first = load_source(tmp_path).fingerprint()
    assert load_source(tmp_path).fingerprint() == first
    assert len(first) == 16 and int(first, 16) >= 0

    make_png(tmp_path / "train" / "a" / "extra.png")
    added = load_source(tmp_path).fingerprint()
    assert added != first

    os.rename(tmp_path / "train" / "a" / "extra.png", tmp_path / "train" / "b" / "extra.png")
    relabelled = load_source(tmp_path).fingerprint()
    assert relabelled not in (first, added)

    target = tmp_path / "train" / "b" / "0.png"
    os.utime(target, ns=(1, 1))
    assert load_source(tmp_path).fingerprint() != relabelled


def test_fingerprint_csv_label_change(tmp_path: Path) -> None:
    for name in "abc":
        make_png(tmp_path / f"{name}.png")
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("path,label\na.png,x\nb.png,y\nc.png,x\n")
    before = load_source(csv_path).fingerprint()
    csv_path.write_text("path,label\na.png,x\nb.png,y\nc.png,y\n")
    assert load_source(csv_path).fingerprint() != before


def test_fingerprint_arrays() -> None:
    base = DataSource(["a", "b"], Split([np.zeros((2, 2), np.uint8)] * 2, [0, 1]))
    same = DataSource(["a", "b"], Split([np.zeros((2, 2), np.uint8)] * 2, [0, 1]), name="x")
    changed = DataSource(
        ["a", "b"], Split([np.zeros((2, 2), np.uint8), np.ones((2, 2), np.uint8)], [0, 1])
    )
    assert base.fingerprint() == same.fingerprint() != changed.fingerprint()


# --- images ---------------------------------------------------------------------------------


def save(im: Image.Image, path: Path, **kwargs) -> Path:
    im.save(path, **kwargs)
    return path


def test_load_image_l(tmp_path: Path) -> None:
    out = load_image(save(Image.new("L", (3, 2), 77), tmp_path / "l.png"))
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8 and (out == 77).all()
    assert out.flags.c_contiguous


def test_load_image_la_and_rgba_composite_on_white(tmp_path: Path) -> None:
    la = Image.new("LA", (2, 2), (0, 0))
    la.putpixel((0, 0), (10, 255))
    out = load_image(save(la, tmp_path / "la.png"))
    assert tuple(out[0, 0]) == (10, 10, 10) and tuple(out[1, 1]) == (255, 255, 255)

    rgba = Image.new("RGBA", (2, 1), (200, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    out = load_image(save(rgba, tmp_path / "rgba.png"))
    assert tuple(out[0, 0]) == (200, 0, 0)
    assert all(abs(int(v) - 127) <= 1 for v in out[0, 1])


def test_load_image_palette(tmp_path: Path) -> None:
    im = Image.new("P", (2, 2), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    out = load_image(save(im, tmp_path / "p.png"))
    assert tuple(out[0, 0]) == (10, 200, 30)

    im.putpixel((0, 0), 0)
    out = load_image(save(im, tmp_path / "pt.png", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)
    out = load_image(save(im, tmp_path / "pt.gif", transparency=0))
    assert tuple(out[0, 0]) == (255, 255, 255) and tuple(out[1, 1]) == (10, 200, 30)


def test_load_image_cmyk(tmp_path: Path) -> None:
    im = Image.new("CMYK", (2, 2), (255, 0, 0, 0))
    for path in (tmp_path / "c.tif", tmp_path / "c.jpg"):
        out = load_image(save(im, path))
        assert out.shape == (2, 2, 3)
        r, g, b = (int(v) for v in out[0, 0])
        assert r < 30 and g > 220 and b > 220


def test_load_image_16_bit_keeps_range(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (4, 1))
    im = Image.fromarray(gradient)
    assert im.mode.startswith("I;16")
    out = load_image(save(im, tmp_path / "g16.png"))
    assert out.shape == (4, 64, 3)
    assert out.max() > 200 and out.min() < 10 and out[0, 32, 0] in range(120, 136)
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()
    assert len(np.unique(out)) > 50

    wide = Image.fromarray(np.tile(np.arange(0, 70000, 700, dtype=np.int32), (2, 1)))
    out = load_image(save(wide, tmp_path / "i32.tif"))
    assert out.min() == 0 and out.max() == 255


def test_load_image_float_and_bilevel(tmp_path: Path) -> None:
    f = Image.fromarray(np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4))
    out = load_image(save(f, tmp_path / "f.tif"))
    assert out.min() == 0 and out.max() == 255
    bw = Image.new("1", (3, 3), 1)
    bw.putpixel((0, 0), 0)
    out = load_image(save(bw, tmp_path / "bw.png"))
    assert tuple(out[0, 0]) == (0, 0, 0) and tuple(out[2, 2]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "1", "I;16", "CMYK"])
def test_load_image_1x1(tmp_path: Path, mode: str) -> None:
    path = tmp_path / ("one.tif" if mode == "CMYK" else "one.png")
    out = load_image(save(Image.new(mode, (1, 1)), path))
    assert out.shape == (1, 1, 3) and out.dtype == np.uint8


def test_load_image_exif_orientation(tmp_path: Path) -> None:
    im = Image.new("RGB", (4, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = load_image(save(im, tmp_path / "rot.jpg", exif=exif))
    assert out.shape == (4, 2, 3)


def test_load_image_arrays() -> None:
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    out = load_image(grey)
    assert out.shape == (2, 3, 3) and (out[..., 2] == grey).all()
    assert load_image(grey[:, :, None]).shape == (2, 3, 3)
    rgb = np.zeros((2, 2, 3), np.uint8)
    assert load_image(rgb).shape == (2, 2, 3)
    rgba = np.zeros((1, 1, 4), np.uint8)
    assert tuple(load_image(rgba)[0, 0]) == (255, 255, 255)
    assert "uint8" in error_of(load_image, np.zeros((2, 2), np.float32))
    assert "shape" in error_of(load_image, np.zeros((2, 2, 2), np.uint8))


def corrupt_files(tmp_path: Path) -> dict[str, Path]:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, format="PNG")
    data = buf.getvalue()
    files = {
        "truncated": tmp_path / "truncated.png",
        "garbage": tmp_path / "garbage.jpg",
        "zero": tmp_path / "zero bytes.png",
    }
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["garbage"].write_bytes(b"this is not an image at all" * 10)
    files["zero"].write_bytes(b"")
    return files


@pytest.mark.parametrize("kind", ["truncated", "garbage", "zero"])
def test_load_image_corrupt_raises(tmp_path: Path, kind: str) -> None:
    path = corrupt_files(tmp_path)[kind]
    msg = error_of(load_image, path)
    assert str(path) in msg and "cannot decode" in msg


def test_load_image_missing_file(tmp_path: Path) -> None:
    msg = error_of(load_image, str(tmp_path / "gone.png"))
    assert "gone.png" in msg and "not found" in msg


def test_probe_image(tmp_path: Path) -> None:
    good = make_png(tmp_path / "ok.png")
    assert probe_image(good) is None
    files = corrupt_files(tmp_path)
    assert probe_image(files["zero"]) == "empty file"
    assert probe_image(files["garbage"]) == "not a recognised image format"
    reason = probe_image(files["truncated"])
    assert isinstance(reason, str) and reason and "\n" not in reason
    assert probe_image(tmp_path / "missing.png") == "file not found"


def test_corrupt_images_are_not_checked_by_load_source(tmp_path: Path) -> None:
    make_folder(tmp_path, {"a": 1, "b": 1})
    (tmp_path / "a" / "bad.png").write_bytes(b"")
    assert len(load_source(tmp_path).train) == 3


def test_image_extensions() -> None:
    assert {".png", ".jpg", ".jpeg"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
