"""Full-batch L-BFGS: a linear head fitted to convergence every epoch on cached features.

With ``optimizer: lbfgs`` each epoch is one L-BFGS solve over the whole training set (one batch
of cached features) under an L2 strength swept geometrically over ``l2_range`` from the first
epoch to the last; the best checkpoint by validation accuracy picks the strength.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

__all__ = ["FreshCurvature", "head_l2_penalty", "l2_strength"]


def l2_strength(epoch: int, epochs: int, l2_range: tuple[float, float]) -> float:
    """The L2 strength of ``epoch`` of ``epochs``: geometric from ``l2_range[0]`` to ``[1]``.

    A range with a zero end takes the first value until the last epoch, then the last.
    """
    first, last = l2_range
    if epochs <= 1 or first == last:
        return float(first)
    if min(first, last) == 0:
        return float(first if epoch < epochs - 1 else last)
    return float(first * (last / first) ** (epoch / (epochs - 1)))


def head_l2_penalty(head: nn.Module, strength: float) -> torch.Tensor:
    """``strength/2 * ||W||^2`` over the head's weight matrices (biases are not penalised)."""
    weights = [p for n, p in head.named_parameters() if n.endswith("weight")]
    return 0.5 * strength * sum(w.pow(2).sum() for w in weights)


class FreshCurvature(Callback):
    """Clear the L-BFGS state at every epoch start: each epoch solves a new L2 strength from the
    previous solution, and the curvature history of the old problem would mislead it."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            optimizer.state.clear()
