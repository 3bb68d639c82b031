"""Layer groups of any timm model, shallow to deep, from timm's ``group_matcher``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models._manipulate import group_parameters

__all__ = ["LayerGroup", "layer_groups"]


@dataclass(frozen=True)
class LayerGroup:
    """A contiguous block of a backbone (the stem, a stage, the final layers).

    Attributes:
        index: Depth order, 0 = closest to the input.
        name: A readable name, e.g. ``stem`` or ``blocks.3``.
        params: Parameter names (as in ``backbone.named_parameters()``).
    """

    index: int
    name: str
    params: tuple[str, ...]


def _group_name(params: tuple[str, ...], index: int) -> str:
    if index == 0:
        return "stem"
    parts = params[0].split(".")
    if parts[0] in ("blocks", "stages", "layers") and len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[:2])
    return parts[0]


def layer_groups(backbone: torch.nn.Module, coarse: bool = True) -> list[LayerGroup]:
    """Split a timm backbone's parameters into ordered layer groups.

    Uses the model's ``group_matcher`` (stem -> stages or blocks -> final layers); works the same
    for ResNet, EfficientNet, ConvNeXt, ViT, BYOBNet and every other timm family that defines one.
    Models without a matcher form a single group.

    Args:
        backbone: A timm model (usually created with ``num_classes=0``).
        coarse: One group per stage (``True``) or per block where the family distinguishes them.

    Returns:
        Groups ordered from the input to the output; every trainable parameter is in exactly one.
    """
    names = [n for n, _ in backbone.named_parameters()]
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None:
        return [LayerGroup(0, "stem", tuple(names))]
    grouped = group_parameters(backbone, matcher(coarse=coarse))
    groups = []
    for index, key in enumerate(sorted(grouped)):
        params = tuple(grouped[key])
        groups.append(LayerGroup(index, _group_name(params, index), params))
    return groups
