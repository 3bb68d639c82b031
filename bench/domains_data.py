"""Held-out few-shot tasks from three image sources unlike Fashion-MNIST and digits.

* ``icons``: GNOME's Adwaita symbolic icons, the 96x96 PNGs of the Debian package
  ``adwaita-icon-theme`` (``/usr/share/icons/Adwaita/96x96/<context>/``; CC-BY-SA-3.0 or
  LGPL-3, "GNOME Project"). Black line art on a transparent background; the class is the
  icon's context (actions, devices, emotes, places, ...), a semantic grouping of unlike
  drawings. The files are copied as they are (RGBA), so a reader must composite them.
* ``glyphs``: letters rendered from the 21 DejaVu text faces of the Debian packages
  ``fonts-dejavu-core`` and ``fonts-dejavu-extra`` (``/usr/share/fonts/truetype/dejavu/``;
  Bitstream Vera licence): coloured strokes on a coloured ground, rotated, scaled and shifted
  at random. The class is the letter; train and test images come from disjoint sets of
  faces, so the test asks for a face never seen.
* ``textures``: crops of the natural photos and textures bundled in scikit-image's wheel
  (``skimage/data/`` of ``scikit_image-0.26.0`` from PyPI; public-domain and CC0 images, see
  that folder's README): the class is the picture a crop comes from (brick, grass, gravel,
  coins, a cat, coffee, a rocket, ...). Train crops come from the left 60 % of each picture,
  test crops from the right 40 %, so no pixel is in both.

A draw (a seed) picks the classes and the images, as in bench/heldout_data.py; the tuning and
report seeds are that module's.
"""

from __future__ import annotations

import functools
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["DOMAIN_FAMILIES", "Domain", "build_domain_task"]

ICONS = Path("/usr/share/icons/Adwaita/96x96")
FONTS = Path("/usr/share/fonts/truetype/dejavu")
#: scikit-image's wheel (``pip download scikit-image==0.26.0 --no-deps -d DIR``).
SKIMAGE_WHEEL_GLOB = "scikit_image-*.whl"
TEXTURES = (
    "brick", "grass", "gravel", "camera", "coins", "moon", "astronaut", "coffee", "chelsea",
    "rocket", "hubble_deep_field", "retina", "ihc", "motorcycle_left",
)  # fmt: skip
LETTERS = "abdefghkmnqrstwy"


@dataclass(frozen=True)
class Domain:
    """A family of tasks from one of the sources above."""

    name: str
    source: str  # "icons", "glyphs" or "textures"
    classes: int
    train: int  # labelled images per class
    test: int  # test images per class (icons: at most what the context has left)
    image_size: int | None  # None: the backbone's default (what a user gets)


DOMAIN_FAMILIES: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("icons6-8", "icons", 6, 8, 20, None),
        Domain("glyphs8-10-96px", "glyphs", 8, 10, 30, 96),
        Domain("textures8-8-128px", "textures", 8, 8, 30, 128),
    )
}


def _icons(family: Domain, rng: np.random.Generator) -> dict[str, tuple[list, list]]:
    contexts = sorted(p.name for p in ICONS.iterdir() if len(list(p.glob("*.png"))) >= 17)
    chosen = sorted(rng.choice(contexts, family.classes, replace=False))
    out = {}
    for context in chosen:
        files = sorted((ICONS / context).glob("*.png"))
        order = rng.permutation(len(files))
        train = [files[i] for i in order[: family.train]]
        test = [files[i] for i in order[family.train : family.train + family.test]]
        out[context] = (train, test)
    return out


def _glyph(letter: str, face: Path, rng: np.random.Generator) -> Image.Image:
    size = 96
    ground = tuple(int(v) for v in rng.integers(0, 256, 3))
    ink = tuple(int(255 - v) for v in ground)  # far from the ground
    font = ImageFont.truetype(str(face), int(rng.integers(40, 72)))
    canvas = Image.new("RGB", (size * 2, size * 2), ground)
    ImageDraw.Draw(canvas).text((size, size), letter, fill=ink, font=font, anchor="mm")
    canvas = canvas.rotate(float(rng.uniform(-25, 25)), fillcolor=ground)
    dx, dy = (int(v) for v in rng.integers(-12, 13, 2))
    half = size // 2
    return canvas.crop((half + dx, half + dy, half + dx + size, half + dy + size))


def _glyphs(family: Domain, rng: np.random.Generator) -> dict[str, tuple[list, list]]:
    faces = sorted(f for f in FONTS.glob("DejaVu*.ttf") if "Math" not in f.name)
    order = rng.permutation(len(faces))
    train_faces = [faces[i] for i in order[:13]]
    test_faces = [faces[i] for i in order[13:]]
    letters = sorted(rng.choice(list(LETTERS), family.classes, replace=False))
    out = {}
    for letter in letters:
        train = [_glyph(letter, train_faces[int(rng.integers(len(train_faces)))], rng)
                 for _ in range(family.train)]  # fmt: skip
        test = [_glyph(letter, test_faces[int(rng.integers(len(test_faces)))], rng)
                for _ in range(family.test)]  # fmt: skip
        out[f"letter_{letter}"] = (train, test)
    return out


@functools.cache
def _texture(name: str) -> Image.Image:
    wheels = sorted(Path("/tmp/skimage-wheel").glob(SKIMAGE_WHEEL_GLOB))
    if not wheels:
        raise SystemExit(
            "textures need scikit-image's wheel: "
            "pip download scikit-image==0.26.0 --no-deps -d /tmp/skimage-wheel"
        )
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.startswith(f"skimage/data/{name}."))
        return Image.open(io.BytesIO(wheel.read(member))).convert("RGB")


def _crop(picture: Image.Image, left: float, right: float, rng: np.random.Generator) -> Image.Image:
    width, height = picture.size
    side = int(rng.uniform(0.2, 0.35) * min(width, height))
    x0 = int(rng.uniform(left * width, right * width - side))
    y0 = int(rng.uniform(0, height - side))
    return picture.crop((x0, y0, x0 + side, y0 + side)).resize((96, 96), Image.BICUBIC)


def _textures(family: Domain, rng: np.random.Generator) -> dict[str, tuple[list, list]]:
    names = sorted(rng.choice(TEXTURES, family.classes, replace=False))
    out = {}
    for name in names:
        picture = _texture(name)
        train = [_crop(picture, 0.0, 0.6, rng) for _ in range(family.train)]
        test = [_crop(picture, 0.6, 1.0, rng) for _ in range(family.test)]
        out[name] = (train, test)
    return out


def build_domain_task(root: Path, family: Domain, seed: int) -> Path:
    """Write draw ``seed`` of ``family`` as ``root/{train,test}/<class>/*.png``."""
    folder = root / f"{family.name}-s{seed}"
    if (folder / "test").is_dir():
        return folder
    rng = np.random.default_rng(seed)
    pools = {"icons": _icons, "glyphs": _glyphs, "textures": _textures}[family.source]
    tmp = folder.with_name(folder.name + ".tmp")
    for name, (train, test) in pools(family, rng).items():
        for split, items in (("train", train), ("test", test)):
            where = tmp / split / name
            where.mkdir(parents=True, exist_ok=True)
            for i, item in enumerate(items):
                target = where / f"{i:05d}.png"
                if isinstance(item, Path):
                    target.write_bytes(item.read_bytes())
                else:
                    item.save(target)
    tmp.rename(folder)
    return folder
