"""Property tests: any file, any setting, either works or raises TlkitError; never a wrong answer.

Files: random bytes, truncated encodings of real images, and valid images of random mode and
size go through ``probe_image``, ``load_image`` and a TransferDataModule. Settings: values of
any sign and type go to TransferModule, TransferDataModule and the strategies.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tlkit.data import TransferDataModule
from tlkit.data.images import load_image, probe_image
from tlkit.errors import TlkitError
from tlkit.module import TransferModule
from tlkit.strategies import STRATEGIES, Strategy, create_strategy, strategy_settings

SETTINGS = settings(
    max_examples=40,
    derandomize=True,  # the same examples on every run: a failure here reproduces
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: mode -> formats that can store it
MODES = {
    "1": ("PNG", "BMP", "TIFF"),
    "L": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
    "LA": ("PNG", "TIFF"),
    "P": ("PNG", "BMP", "GIF", "TIFF"),
    "RGB": ("PNG", "JPEG", "BMP", "TIFF", "GIF", "WEBP"),
    "RGBA": ("PNG", "TIFF", "WEBP"),
    "CMYK": ("JPEG", "TIFF"),
    "I;16": ("PNG", "TIFF"),
    "I": ("TIFF",),
    "F": ("TIFF",),
}
EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif",
              "WEBP": ".webp"}  # fmt: skip


def make_image(mode: str, width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (height, width), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-(2**20), 2**20, (height, width), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(size=(height, width)).astype(np.float32))
    rgb = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode == "LA":
        return Image.merge("LA", (rgb.convert("L"), rgb.getchannel(0)))
    if mode == "RGBA":
        return Image.merge("RGBA", (*rgb.split(), rgb.getchannel(1)))
    return rgb.convert(mode)


@st.composite
def valid_images(draw) -> tuple[bytes, str, Image.Image]:
    mode = draw(st.sampled_from(sorted(MODES)))
    fmt = draw(st.sampled_from(MODES[mode]))
    size = (draw(st.integers(1, 48)), draw(st.integers(1, 48)))
    image = make_image(mode, *size, draw(st.integers(0, 2**16)))
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue(), EXTENSIONS[fmt], image


@st.composite
def image_files(draw) -> tuple[bytes, str, Image.Image | None]:
    """(content, extension, the image when the content is a complete encoding of it)."""
    kind = draw(st.sampled_from(["valid", "truncated", "random"]))
    if kind == "random":
        content = draw(st.binary(max_size=600))
        return content, draw(st.sampled_from(sorted(EXTENSIONS.values()))), None
    content, extension, image = draw(valid_images())
    if kind == "valid":
        return content, extension, image
    cut = draw(st.integers(0, max(len(content) - 1, 0)))
    return content[:cut], extension, None


def check_decoded(array: np.ndarray, image: Image.Image | None, fmt_extension: str) -> None:
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    assert array.flags["C_CONTIGUOUS"]
    if image is None:
        return
    assert array.shape[:2] == (image.height, image.width)
    if image.mode == "RGB" and fmt_extension in (".png", ".bmp", ".tif"):
        assert np.array_equal(array, np.asarray(image))
    if image.mode == "L" and fmt_extension in (".png", ".bmp", ".tif"):
        grey = np.asarray(image)
        assert all(np.array_equal(array[..., c], grey) for c in range(3))


@SETTINGS
@given(case=image_files())
def test_any_file_decodes_to_rgb_or_raises_tlkit_error(tmp_path_factory, case):
    content, extension, image = case
    path = tmp_path_factory.mktemp("img") / f"file{extension}"
    path.write_bytes(content)
    reason = probe_image(path)
    assert reason is None or (isinstance(reason, str) and reason and "\n" not in reason)
    if image is not None:
        assert reason is None, f"a valid {image.mode} image was judged undecodable: {reason}"
    try:
        array = load_image(path)
    except TlkitError as err:
        assert reason is not None, f"probe passed a file that does not load: {err}"
        assert str(path) in str(err) and "\n" not in str(err)
        return
    check_decoded(array, image, extension)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("base")
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@SETTINGS
@given(case=image_files())
def test_a_datamodule_skips_exactly_the_files_that_do_not_decode(
    tmp_path_factory, base_folder, case
):
    content, extension, _ = case
    root = tmp_path_factory.mktemp("data")
    for child in base_folder.rglob("*.png"):
        target = root / child.relative_to(base_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(child.read_bytes())
    extra = root / "train" / "a" / f"extra{extension}"
    extra.write_bytes(content)
    decodable = probe_image(extra) is None
    dm = TransferDataModule(str(root), backbone="test_resnet", image_size=16, augment="light")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            dm.setup("fit")
        except TlkitError:
            pytest.fail("setup must skip undecodable files, not stop")
    train = dm.datasets["train"]
    assert (str(extra) in train.split.items) == decodable
    assert len(train) == 4 + decodable
    assert dm.describe()["num_train"] == len(train)
    for index in range(len(train)):
        tensor, label = train[(0, index)]
        assert tensor.shape == (3, 16, 16) and torch.isfinite(tensor).all()
        assert label in (0, 1)


WILD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-1000, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=2),
)
MODULE_SETTINGS = (
    "num_classes", "weights", "pretrained", "trust_weights", "strategy", "strategy_args",
    "head_hidden", "dropout", "label_smoothing", "drop_path_rate", "optimizer", "lr",
    "weight_decay", "momentum", "scheduler", "warmup_epochs", "gamma", "step_epochs",
    "class_names", "l2_range", "lbfgs_max_iter", "channels_last", "output_stride",
)  # fmt: skip
DATA_SETTINGS = (
    "image_size", "batch_size", "num_workers", "shots", "val_fraction", "test_fraction", "seed",
    "augment", "strict", "cache_features", "cache_dir",
)  # fmt: skip


@st.composite
def strategy_configs(draw) -> tuple[object, dict]:
    name = draw(st.one_of(st.sampled_from(sorted(STRATEGIES)), WILD))
    registered = isinstance(name, str) and name in STRATEGIES
    known = strategy_settings(name) if registered else ["k", "prior"]
    keys = st.one_of(st.sampled_from(known), st.text(max_size=5))
    values = st.one_of(WILD, st.sampled_from(["none", "zero", "pretrained", "eval", "train"]))
    return name, draw(st.dictionaries(keys, values, max_size=3))


def builds_or_refuses(build):
    """``build()``'s result, or None when it raised TlkitError; any other exception fails."""
    try:
        return build()
    except TlkitError as err:
        assert str(err) and "\n" not in str(err)
        return None


@SETTINGS
@given(config=strategy_configs())
def test_strategies_build_or_refuse(config):
    name, kwargs = config
    strategy = builds_or_refuses(lambda: create_strategy(name, **kwargs))
    if strategy is None:
        return
    assert isinstance(strategy, Strategy)
    for epoch in range(3):
        plan = strategy.trainable(epoch, 5)
        assert len(plan) == 5 and all(isinstance(t, bool) for t in plan)
    assert all(np.isfinite(strategy.lr_scales(5)))


@pytest.mark.parametrize("name", ["\n", "full\n", "lp_ft\r\x00", "\t"])
def test_a_name_with_control_characters_still_gets_a_one_line_error(name):
    with pytest.raises(TlkitError) as caught:
        create_strategy(name)
    message = str(caught.value)
    assert message.startswith("unknown strategy") and message.isprintable()


@SETTINGS
@given(
    overrides=st.dictionaries(st.sampled_from(MODULE_SETTINGS), WILD, max_size=4),
    strategy=strategy_configs(),
)
def test_transfer_module_builds_or_refuses(overrides, strategy):
    kwargs = {"num_classes": 3, "backbone": "test_resnet", "pretrained": False}
    kwargs.update(strategy=strategy[0], strategy_args=strategy[1])
    kwargs.update(overrides)
    model = builds_or_refuses(lambda: TransferModule(**kwargs))
    if model is not None:
        logits = model(torch.zeros(2, 3, 16, 16))
        assert logits.shape == (2, kwargs["num_classes"])


@SETTINGS
@given(overrides=st.dictionaries(st.sampled_from(DATA_SETTINGS), WILD, max_size=4))
def test_transfer_datamodule_builds_or_refuses(base_folder, overrides):
    def build() -> TransferDataModule:
        dm = TransferDataModule(str(base_folder), backbone="test_resnet", **overrides)
        dm.describe()
        return dm

    dm = builds_or_refuses(build)
    if dm is not None:
        assert dm.num_classes == 2
