"""Optimizers by name (timm's factory), over per-layer-group learning rates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from timm.optim import create_optimizer_v2

from tlkit.errors import unknown_name

__all__ = ["OPTIMIZERS", "build_optimizer", "layer_param_groups"]

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw", "lbfgs")

#: tlkit name -> timm name and the settings that keep torch's defaults where timm has its own.
_TIMM = {
    "sgd": ("momentum", {"momentum": 0.0}),
    "momentum": ("momentum", {}),
    "nesterov": ("nesterov", {}),
    "adagrad": ("adagrad", {"eps": 1e-10}),
    "rmsprop": ("rmsprop", {"eps": 1e-3}),
    "adam": ("adam", {}),
    "adamw": ("adamw", {}),
}

#: One section of a model: its name, parameters, LR scale and weight decay.
Section = tuple[str, Sequence[torch.nn.Parameter], float, float]


def layer_param_groups(sections: Iterable[Section], lr: float) -> list[dict[str, Any]]:
    """One optimizer group per section, split into matrices and vectors.

    Each group keeps an explicit ``lr`` (``lr`` times the section's scale), which every torch
    scheduler scales; vectors (biases, normalisation weights) get no weight decay.

    Args:
        sections: ``(name, parameters, lr scale, weight decay)``, e.g. one per layer group.
        lr: The base learning rate.

    Returns:
        Groups named ``<section>`` and ``<section>/no_decay``; empty ones are left out.
    """
    # timm's param_groups_weight_decay splits one module, not named sections with their own LR.
    groups: list[dict[str, Any]] = []
    for name, tensors, scale, decay in sections:
        for suffix, subset, wd in (
            ("", [p for p in tensors if p.ndim > 1], decay),
            ("/no_decay", [p for p in tensors if p.ndim <= 1], 0.0),
        ):
            if subset:
                groups.append(
                    {"params": subset, "name": name + suffix, "lr": lr * scale, "weight_decay": wd}
                )
    return groups


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
        lr: Default learning rate for groups without one (positive).
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
    groups = list(param_groups)
    if name == "lbfgs":  # timm's factory has no L-BFGS
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
    timm_name, fixed = _TIMM[name]
    settings = {"momentum": momentum, "betas": betas, **fixed}
    return create_optimizer_v2(groups, timm_name, lr=lr, weight_decay=weight_decay, **settings)
