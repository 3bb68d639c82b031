"""Tests for tlkit.transforms: presets sized and normalised from the backbone's config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tlkit.errors import TlkitError
from tlkit.transforms import (
    AUGMENT_PRESETS,
    PipelineSpec,
    build_pipeline,
    data_config_for,
    eval_transform,
    train_transform,
)


def _photo(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.mark.parametrize("preset", AUGMENT_PRESETS)
def test_every_preset_gives_a_float_tensor_of_the_requested_size(preset):
    spec = PipelineSpec(data_config_for("test_resnet"), image_size=40)
    apply = build_pipeline(train_transform(spec, preset))
    for image in (_photo(48, 64), _photo(90, 30)):
        out = apply(image)
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32
        assert tuple(out.shape) == (3, 40, 40)


def test_grey_image_is_normalised_with_the_backbones_mean_and_std():
    grey = np.full((50, 70, 3), 128, dtype=np.uint8)
    lite = build_pipeline(
        eval_transform(PipelineSpec(data_config_for("tf_efficientnet_lite0"), 32))
    )
    assert torch.allclose(lite(grey), torch.full((3, 32, 32), (128 / 255 - 0.5) / 0.5), atol=1e-5)
    config = data_config_for("test_efficientnet")
    imagenet = build_pipeline(eval_transform(PipelineSpec(config, 32)))(grey)
    for channel, (mean, std) in enumerate(zip(config["mean"], config["std"], strict=True)):
        assert mean != 0.5
        expected = torch.full((32, 32), (128 / 255 - mean) / std)
        assert torch.allclose(imagenet[channel], expected, atol=1e-5)


def test_none_is_deterministic_and_light_is_random():
    spec = PipelineSpec(data_config_for("test_resnet"), image_size=32)
    image = _photo(64, 64)
    none = build_pipeline(train_transform(spec, "none"))
    assert torch.equal(none(image), none(image))
    light = build_pipeline(train_transform(spec, "light"))
    outputs = [light(image) for _ in range(4)]
    assert not all(torch.equal(outputs[0], other) for other in outputs[1:])


def test_size_comes_from_the_backbone_unless_overridden():
    image = _photo(100, 120)
    lite = PipelineSpec(data_config_for("tf_efficientnet_lite0"))
    assert lite.size == 224
    assert build_pipeline(eval_transform(lite))(image).shape == (3, 224, 224)
    tiny = PipelineSpec(data_config_for("test_resnet"))
    assert tiny.size == data_config_for("test_resnet")["input_size"][-1] == 160
    override = PipelineSpec(data_config_for("tf_efficientnet_lite0"), image_size=48)
    assert build_pipeline(eval_transform(override))(image).shape == (3, 48, 48)
    assert override.describe()["size"] == 48


def test_bad_settings_raise_clear_errors():
    spec = PipelineSpec(data_config_for("test_resnet"), image_size=32)
    with pytest.raises(TlkitError, match=r"unknown augmentation preset 'lihgt'.*light"):
        train_transform(spec, "lihgt")
    with pytest.raises(TlkitError, match="image size must be positive"):
        PipelineSpec(data_config_for("test_resnet"), image_size=0)
    with pytest.raises(TlkitError, match=r"unknown backbone 'tf_efficientnet_lit0'.*lite0"):
        data_config_for("tf_efficientnet_lit0")
