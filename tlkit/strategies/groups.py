"""Layer groups of any timm model, shallow to deep, from timm's ``group_matcher``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models import group_parameters

__all__ = ["LayerGroup", "layer_groups"]

# Names the module itself uses for its optimizer groups; a backbone group must not take them.
_RESERVED = frozenset({"head"})


@dataclass(frozen=True)
class LayerGroup:
    """A contiguous block of a backbone (the stem, a stage, the final layers).

    Attributes:
        index: Depth order, 0 = closest to the input.
        name: A readable, unique name, e.g. ``stem``, ``blocks.3`` or ``final``.
        params: Parameter names (as in ``backbone.named_parameters()``).
    """

    index: int
    name: str
    params: tuple[str, ...]


def _group_name(params: tuple[str, ...], index: int, coarse: bool) -> str:
    if index == 0:
        return "stem"
    modules = [p.split(".")[:-1] for p in params]
    common = []
    for level in zip(*modules, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    if not coarse and len(common) >= 2 and common[0] not in _RESERVED:
        return ".".join(common)
    parts = params[0].split(".")
    if parts[0] in ("blocks", "stages", "layers") and len(parts) > 2 and parts[1].isdigit():
        return ".".join(parts[:2])
    return "final" if parts[0] in _RESERVED else parts[0]


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        out.append(name if count == 0 else f"{name}_{count}")
    return out


def layer_groups(backbone: torch.nn.Module, coarse: bool = True) -> list[LayerGroup]:
    """Split a timm backbone's parameters into ordered layer groups.

    Uses the model's ``group_matcher`` (stem -> stages or blocks -> final layers); works the same
    for ResNet, EfficientNet, ConvNeXt, ViT, BYOBNet and every other timm family that defines one.
    Models without a matcher form a single group; parameters a matcher misses join the deepest
    group (timm treats unmatched layers as the head end of the network).

    Args:
        backbone: A timm model (usually created with ``num_classes=0``).
        coarse: One group per stage (``True``) or per block where the family distinguishes them.

    Returns:
        Groups ordered from the input to the output; every parameter is in exactly one, and
        names are unique (the timm head's norm layer is called ``final``).
    """
    names = [n for n, _ in backbone.named_parameters()]
    matcher = getattr(backbone, "group_matcher", None)
    if matcher is None or not names:
        return [LayerGroup(0, "stem", tuple(names))]
    grouped = group_parameters(backbone, matcher(coarse=coarse))
    members = [list(grouped[key]) for key in sorted(grouped) if grouped[key]]
    placed = {n for group in members for n in group}
    members[-1].extend(n for n in names if n not in placed)
    order = {n: i for i, n in enumerate(names)}
    members = [sorted(dict.fromkeys(group), key=order.__getitem__) for group in members]
    labels = _unique([_group_name(tuple(g), i, coarse) for i, g in enumerate(members)])
    return [
        LayerGroup(index, label, tuple(group))
        for index, (label, group) in enumerate(zip(labels, members, strict=True))
    ]
