"""Shared fixtures: an isolated feature cache and small generated image folders."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

#: Class name -> fill colour of the generated shape images.
SHAPES = {"circle": (220, 40, 40), "square": (40, 180, 60), "triangle": (40, 70, 220)}


def write_shapes(root: Path, per_class: int = 12, size: int = 32, seed: int = 0) -> Path:
    """Write a flat ``root/<class>/*.png`` folder of coloured circles, squares and triangles.

    Each image has a random grey background and one shape of random size and position, so the
    classes differ in both colour and form.
    """
    rng = np.random.default_rng(seed)
    for name, colour in SHAPES.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            grey = int(rng.integers(60, 200))
            image = Image.new("RGB", (size, size), (grey, grey, grey))
            draw = ImageDraw.Draw(image)
            r = int(rng.integers(size // 5, size // 3 + 1))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            box = (cx - r, cy - r, cx + r, cy + r)
            if name == "circle":
                draw.ellipse(box, fill=colour)
            elif name == "square":
                draw.rectangle(box, fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            image.save(folder / f"{name}_{i:02d}.png")
    return root


def write_tinted(
    root: Path, per_class: int, size: int, classes: tuple[str, ...] = ("red", "green", "blue")
) -> Path:
    """Write ``root/<class>/*.png`` noise images, each class tinted in its own RGB channel."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 128, (size, size, 3), dtype=np.uint8)
            pixels[..., c] += 127
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(autouse=True)
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the feature cache (``$TLKIT_CACHE_DIR``) at a fresh folder for every test."""
    root = tmp_path / "tlkit-cache"
    monkeypatch.setenv("TLKIT_CACHE_DIR", str(root))
    return root


@pytest.fixture
def one_thread():
    """Run torch on one thread: tiny models are fastest so, and do not stall a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_shapes(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_shapes(name="shapes", per_class=12, size=32, seed=0)`` -> folder path."""

    def make(name: str = "shapes", **kwargs) -> Path:
        return write_shapes(tmp_path / name, **kwargs)

    return make
