"""The fine-tune plan as plain data: what trains when, at which LR, with which BatchNorm mode."""

from __future__ import annotations

from typing import Any

from torch import nn

from tlkit.batchnorm import BN_WHILE_FROZEN
from tlkit.strategies.base import Strategy
from tlkit.strategies.groups import LayerGroup

__all__ = ["plan_rows"]


def plan_rows(
    strategy: Strategy,
    groups: list[LayerGroup],
    backbone: nn.Module,
    head: nn.Module,
    lr: float,
    epochs: int,
) -> list[dict[str, Any]]:
    """One row per layer group (shallow to deep, then the head) over a fit of ``epochs``.

    Args:
        strategy: The fine-tune strategy.
        groups: The backbone's layer groups.
        backbone: The backbone the groups name parameters of.
        head: The head.
        lr: The head's learning rate (groups get it times their layer-decay scale).
        epochs: Length of the fit.

    Returns:
        Rows with the group's name, its size, the first epoch it trains (``None``: never), its
        LR and its BatchNorm mode while frozen.
    """
    masks = [strategy.trainable(e, len(groups)) for e in range(max(epochs, 1))]
    scales = strategy.lr_scales(len(groups))
    params = dict(backbone.named_parameters())
    frozen_bn = BN_WHILE_FROZEN[strategy.bn]
    rows = []
    for i, group in enumerate(groups):
        start = next((e for e, mask in enumerate(masks) if mask[i]), None)
        rows.append(
            {
                "group": group.name,
                "params": sum(params[n].numel() for n in group.params),
                "trains_from_epoch": start,
                "lr": lr * scales[i],
                "bn_while_frozen": frozen_bn,
            }
        )
    size = sum(p.numel() for p in head.parameters())
    rows.append(
        {"group": "head", "params": size, "trains_from_epoch": 0, "lr": lr, "bn_while_frozen": "-"}
    )
    return rows
