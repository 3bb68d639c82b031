"""Regenerate ``data/demo`` from the Debian package ``dataset-fashion-mnist``.

Draws, with a fixed seed, 20 train + 10 val images per class from the Fashion-MNIST training
set and 50 test images per class from the t10k set, and writes them as 28x28 greyscale PNGs
in ImageFolder layout::

    data/demo/{train,val,test}/<class>/<n>.png

where ``<n>`` is the image's index in its source IDX file, plus ``data/demo/LICENSE`` (the
Fashion-MNIST MIT licence and citation). The output is byte-for-byte
identical on every run. Needs only numpy and Pillow::

    apt-get install dataset-fashion-mnist
    python data/make_demo.py
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "COUNTS", "LICENSE_TEXT", "SEED", "main", "make_demo", "read_idx"]

CLASSES = (
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
COUNTS = {"train": 20, "val": 10, "test": 50}
SEED = 20170825
DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent / "demo"
LICENSE_TEXT = """\
The images in this folder are a subset of Fashion-MNIST by Zalando Research
(https://github.com/zalandoresearch/fashion-mnist), re-encoded as PNG.
Citation: Han Xiao, Kashif Rasul, Roland Vollgraf. Fashion-MNIST: a Novel Image
Dataset for Benchmarking Machine Learning Algorithms. arXiv:1708.07747, 2017.

The MIT License (MIT)

Copyright (c) 2017 Zalando SE, https://tech.zalando.com

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction, including without limitation the rights
to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
copies of the Software, and to permit persons to whom the Software is
furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all
copies or substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR
IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,
FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE
AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER
LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE
SOFTWARE.
"""


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped or plain IDX file of unsigned bytes.

    Args:
        path: The IDX file.

    Returns:
        The array with the shape given in the header.

    Raises:
        ValueError: If the file is not a ubyte IDX file or its size disagrees with the header.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[:3] != b"\0\0\x08":
        raise ValueError(f"{path} is not a ubyte IDX file")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: header {shape}, {data.size} bytes of data")
    return data.reshape(shape)


def _find(source: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (source / name).is_file():
            return source / name
    raise FileNotFoundError(
        f"{source / stem}[.gz] not found; install it with `apt-get install dataset-fashion-mnist`"
    )


def make_demo(source: Path = DEFAULT_SOURCE, out: Path = DEFAULT_OUT) -> dict[str, int]:
    """Write the demo dataset to ``out``, replacing what is there.

    Args:
        source: Folder holding the Fashion-MNIST IDX files.
        out: Destination folder (created; an existing one is replaced).

    Returns:
        Number of images written per split.
    """
    rng = np.random.default_rng(SEED)
    train_x = read_idx(_find(source, "train-images-idx3-ubyte"))
    train_y = read_idx(_find(source, "train-labels-idx1-ubyte"))
    test_x = read_idx(_find(source, "t10k-images-idx3-ubyte"))
    test_y = read_idx(_find(source, "t10k-labels-idx1-ubyte"))

    picks: dict[str, list[tuple[int, int]]] = {"train": [], "val": [], "test": []}
    n_train, n_val = COUNTS["train"], COUNTS["val"]
    for label in range(len(CLASSES)):
        drawn = rng.permutation(np.flatnonzero(train_y == label))[: n_train + n_val]
        picks["train"] += [(label, int(i)) for i in np.sort(drawn[:n_train])]
        picks["val"] += [(label, int(i)) for i in np.sort(drawn[n_train:])]
        drawn = rng.permutation(np.flatnonzero(test_y == label))[: COUNTS["test"]]
        picks["test"] += [(label, int(i)) for i in np.sort(drawn)]

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-", dir=out.parent))
    staging.chmod(0o755)
    try:
        (staging / "LICENSE").write_text(LICENSE_TEXT, encoding="utf-8")
        for split, entries in picks.items():
            images = train_x if split in ("train", "val") else test_x
            for label, index in entries:
                folder = staging / split / CLASSES[label]
                folder.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(folder / f"{index}.png", optimize=True)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return {split: len(entries) for split, entries in picks.items()}


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point.

    Args:
        argv: Arguments (defaults to ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="IDX folder")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    try:
        counts = make_demo(args.source, args.out)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    size = sum(p.stat().st_size for p in args.out.rglob("*.png"))
    print(f"wrote {counts} to {args.out} ({size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
