"""Layer groups: shallow to deep, every parameter once, stem first, on each timm family."""

from __future__ import annotations

import pytest
import timm
import torch
from helpers import check_layer_groups
from torch import nn

from tlkit.strategies import layer_groups

TINY = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "test_byobnet"]


@pytest.mark.parametrize("name", TINY)
def test_groups_ordered_and_complete(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    check_layer_groups(model, 64)


def test_fine_groups_split_stages_into_blocks() -> None:
    model = timm.create_model("test_convnext", pretrained=False, num_classes=0)
    coarse, fine = layer_groups(model), layer_groups(model, coarse=False)
    assert len(fine) > len(coarse)
    assert "stages.2.blocks.1" in {g.name for g in fine}
    assert len({g.name for g in fine}) == len(fine)
    assert sorted(n for g in fine for n in g.params) == sorted(n for g in coarse for n in g.params)


def test_model_without_matcher_is_one_group() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    groups = layer_groups(model)
    assert len(groups) == 1
    assert groups[0].params == tuple(n for n, _ in model.named_parameters())
