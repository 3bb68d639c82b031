"""The TransferModule's settings, checked once, before anything is built from them."""

from __future__ import annotations

import os
from typing import Any

from tlkit.balance import BALANCES
from tlkit.errors import TlkitError, check_number, check_type, unknown_name
from tlkit.optim import OPTIMIZERS
from tlkit.schedules import SCHEDULES
from tlkit.strategies import Strategy

__all__ = ["POOLS", "SOLVERS", "check_settings", "check_strategy", "exact_applies"]

#: How the head is fitted: by the optimizer over epochs, or exactly (frozen linear heads).
SOLVERS = ("epochs", "exact", "auto")
#: How the last feature map is pooled: the backbone's own average, or fractional max first.
POOLS = ("avg", "fmp")


def check_settings(given: dict[str, Any]) -> None:
    """Refuse a TransferModule setting of the wrong type or out of range, naming it.

    Args:
        given: The module's ``__init__`` arguments by name.

    Raises:
        TlkitError: For the first setting that is wrong, with how to fix it.
    """
    _check_model(given)
    _check_training(given)
    _check_labels(given)


def _check_model(given: dict[str, Any]) -> None:
    check_number("num_classes", given["num_classes"], integer=True)
    if given["num_classes"] < 2:
        raise TlkitError(f"need at least 2 classes, got {given['num_classes']}")
    check_type("backbone", given["backbone"], str, "a timm model name")
    if given["weights"] is not None:
        check_type("weights", given["weights"], (str, os.PathLike), "a file path")
    for name in ("pretrained", "trust_weights", "channels_last"):
        check_type(name, given[name], bool, "true or false")
    check_type("strategy", given["strategy"], (str, Strategy), "a strategy name")
    args = given["strategy_args"]
    if args is not None and not (isinstance(args, dict) and all(isinstance(k, str) for k in args)):
        raise TlkitError(f"strategy_args must be a mapping of setting names, got {args!r}")
    check_number("head_hidden", given["head_hidden"], integer=True, minimum=0)
    check_number("dropout", given["dropout"], minimum=0, below=1)
    check_number("label_smoothing", given["label_smoothing"])
    if not 0.0 <= given["label_smoothing"] < 1.0:
        raise TlkitError(f"label_smoothing must be in [0, 1), got {given['label_smoothing']}")
    if given["drop_path_rate"] is not None:
        check_number("drop_path_rate", given["drop_path_rate"], minimum=0, below=1)
    if given["output_stride"] not in (None, 8, 16, 32):
        raise TlkitError(f"output_stride must be 8, 16 or 32, got {given['output_stride']!r}")
    check_type("pool", given["pool"], str, "avg or fmp")
    if given["pool"] not in POOLS:
        raise unknown_name("pool", given["pool"], POOLS)


def _check_training(given: dict[str, Any]) -> None:
    for name in ("optimizer", "scheduler", "solver"):
        check_type(name, given[name], str, f"a {name} name")
    check_number("learning rate", given["lr"])
    if not given["lr"] > 0:
        raise TlkitError(f"learning rate must be positive, got {given['lr']}; pass e.g. `lr=1e-3`")
    check_number("weight_decay", given["weight_decay"], minimum=0)
    check_number("momentum", given["momentum"], minimum=0, maximum=1)
    check_number("warmup_epochs", given["warmup_epochs"], minimum=0)
    if given["gamma"] is not None:
        check_number("gamma", given["gamma"], above=0)
    check_number("step_epochs", given["step_epochs"], integer=True, minimum=1)
    l2_range = given["l2_range"]
    if not isinstance(l2_range, (list, tuple)) or len(l2_range) != 2:
        raise TlkitError(f"l2_range must be a pair (first, last), got {l2_range!r}")
    for value in l2_range:
        check_number("l2_range", value, minimum=0)
    check_number("lbfgs_max_iter", given["lbfgs_max_iter"], integer=True, minimum=1)
    for kind, name, known in (
        ("optimizer", given["optimizer"], OPTIMIZERS),
        ("scheduler", given["scheduler"], SCHEDULES),
        ("solver", given["solver"], SOLVERS),
    ):
        if name not in known:
            raise unknown_name(kind, str(name), known)


def _check_labels(given: dict[str, Any]) -> None:
    balance = given.get("class_balance", "none")
    choices = ("auto", *(b.name for b in BALANCES))
    if balance not in choices:
        raise TlkitError(f"class_balance must be one of {', '.join(choices)}, got {balance!r}")
    names = given["class_names"]
    if names is not None and not (
        isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)
    ):
        raise TlkitError(f"class_names must be a list of names, got {names!r}")
    if names is not None and len(names) != given["num_classes"]:
        raise TlkitError(
            f"class_names has {len(names)} names for {given['num_classes']} classes; "
            "give one name per class"
        )


def exact_applies(strategy: Strategy, head_hidden: int) -> bool:
    """True for a frozen backbone whose features can be cached and a linear head on them."""
    return strategy.frozen_backbone and strategy.bn != "train" and not head_hidden


def check_strategy(
    strategy: Strategy, optimizer: str, solver: str, head_hidden: int, pool: str = "avg"
) -> None:
    """Refuse the optimizer and solver settings ``strategy`` cannot serve.

    Raises:
        TlkitError: For ``optimizer: lbfgs`` or ``solver: exact`` where the backbone trains.
    """
    if optimizer == "lbfgs" and not strategy.frozen_backbone:
        raise TlkitError(
            "optimizer lbfgs trains a linear head on cached features: use it with strategy "
            "linear_probe or probe_stage"
        )
    if pool == "fmp" and strategy.feature_stage is not None:
        raise TlkitError(
            "fractional max pooling pools the last feature map: use `pool=fmp` with the top "
            "features (no probe_stage stage)"
        )
    if solver == "exact" and not exact_applies(strategy, head_hidden):
        raise TlkitError(
            "solver exact fits a linear head on frozen features: use it with strategy "
            "linear_probe or probe_stage, head_hidden 0 and a BatchNorm policy other than train"
        )
