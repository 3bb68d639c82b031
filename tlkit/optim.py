"""Optimizers by name, over per-group learning rates."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from tlkit.errors import TlkitError, unknown_name

__all__ = ["OPTIMIZERS", "build_optimizer"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lbfgs")


def build_optimizer(
    name: str,
    param_groups: Iterable[dict[str, Any]],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    betas: tuple[float, float] = (0.9, 0.999),
    lbfgs_max_iter: int = 200,
) -> torch.optim.Optimizer:
    """Create an optimizer by name.

    Args:
        name: ``sgd`` (plain), ``momentum``, ``nesterov``, ``adagrad``, ``rmsprop``, ``adam`` or
            ``adamw``, or ``lbfgs`` (full-batch L-BFGS with a strong-Wolfe line search: all
            groups are merged into one, ``lr`` is 1).
        param_groups: Groups with ``params`` and their own ``lr`` (and any other per-group keys).
        lr: Default learning rate for groups without one.
        weight_decay: Weight decay (decoupled for ``adamw``; L2 in the gradient otherwise). Groups
            may override it.
        momentum: Momentum of ``momentum``, ``nesterov`` and ``rmsprop``.
        betas: Adam betas.
        lbfgs_max_iter: L-BFGS iterations per ``step`` (one step per full batch).

    Returns:
        The optimizer; each group keeps its extra keys (e.g. ``name``).
    """
    if name not in OPTIMIZERS:
        raise unknown_name("optimizer", name, OPTIMIZERS)
    if not lr > 0:
        raise TlkitError(f"learning rate must be positive, got {lr}; pass e.g. --lr 1e-3")
    if weight_decay < 0:
        raise TlkitError(f"weight decay must be >= 0, got {weight_decay}")
    groups = list(param_groups)
    common = {"lr": lr, "weight_decay": weight_decay}
    if name == "sgd":
        return torch.optim.SGD(groups, **common)
    if name in ("momentum", "nesterov"):
        return torch.optim.SGD(groups, momentum=momentum, nesterov=name == "nesterov", **common)
    if name == "adagrad":
        return torch.optim.Adagrad(groups, **common)
    if name == "rmsprop":
        return torch.optim.RMSprop(groups, momentum=momentum, alpha=0.9, eps=1e-3, **common)
    if name == "lbfgs":
        params = [p for group in groups for p in group["params"]]
        return torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=lbfgs_max_iter,
            history_size=20,
            tolerance_grad=1e-7,
            tolerance_change=1e-10,
            line_search_fn="strong_wolfe",
        )
    if name == "adam":
        return torch.optim.Adam(groups, betas=betas, **common)
    return torch.optim.AdamW(groups, betas=betas, **common)
