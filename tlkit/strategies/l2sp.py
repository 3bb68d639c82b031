"""L2-SP (Li et al. 2018): a pull of the fine-tuned backbone weights towards the pretrained ones."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DEFAULT_STRENGTH", "PretrainedAnchor"]

#: Strength of the pull when the strategy gives no ``prior_strength``.
DEFAULT_STRENGTH = 0.01


class PretrainedAnchor(nn.Module):
    """A copy of a backbone's starting weights (non-persistent buffers) and the L2-SP penalty.

    Args:
        backbone: The backbone, at its pretrained weights; ``None`` anchors nothing (no prior).
    """

    def __init__(self, backbone: nn.Module | None = None) -> None:
        super().__init__()
        for name, param in backbone.named_parameters() if backbone is not None else ():
            self.register_buffer(_key(name), param.detach().clone(), persistent=False)

    def penalty(self, backbone: nn.Module, strength: float | None) -> torch.Tensor:
        """``strength/2 * ||w - w_pretrained||^2`` over the backbone weights that train.

        Args:
            backbone: The backbone this anchor was taken from.
            strength: The prior's strength (``None``: :data:`DEFAULT_STRENGTH`).

        Returns:
            A scalar on the backbone's device; zero when nothing is anchored or nothing trains.
        """
        strength = DEFAULT_STRENGTH if strength is None else strength
        anchored = dict(self.named_buffers())
        terms = [
            (param - anchored[_key(name)]).pow(2).sum()
            for name, param in backbone.named_parameters()
            if param.requires_grad and _key(name) in anchored
        ]
        if not terms:
            device = next(backbone.parameters(), torch.zeros(())).device
            return torch.zeros((), device=device)
        return 0.5 * strength * torch.stack(terms).sum()


def _key(name: str) -> str:
    return name.replace(".", "__")
